"""Runnable demos of mmaccel: the Gradio app (``python -m demos.app``) and its drawing helpers."""
