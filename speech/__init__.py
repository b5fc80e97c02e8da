"""Audio-token model families (codec LMs), their tokenizers and checkpoint loaders.

Families register themselves with ``mmaccel.models.register_family``; nothing here yet.
"""
