"""Optional Triton kernels (acceptance, sampling), each beside its pure-torch reference.

The engine never needs this package: the reference path in ``mmaccel`` always works.
"""
