"""Image model families, their tokenizers, checkpoint loaders and the Shapes-T2I data."""
