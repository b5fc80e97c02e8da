"""MAR (Li et al. 2024, "Autoregressive Image Generation without Vector Quantization"): the
masked autoregressive transformer with Diffusion Loss and its KL VAE, in the official
checkpoint layout (LTH14/mar). Import from the modules: ``config``, ``model``, ``diffloss``,
``diffusion``, ``loader``, ``vae``.
"""
