"""Triton kernels and their plain-PyTorch references (imported as ``worldkit_kernels``)."""
