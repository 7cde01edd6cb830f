"""Triton kernels and their plain-PyTorch references (imported as ``worldkit_kernels``).

Triton is imported only when a Triton path is used (``impl="triton"``, or ``"auto"`` on CUDA).
"""
from .blocks import build_transposed, check_lists, lists_are_top_k, pool_blocks, resolve_top_k
from .pbsa import pbsa_attention, pbsa_attention_with_lse
from .pbsa_reference import reference
from .pbsa_torch import pbsa_torch
from .topk import topk_blocks

__all__ = [
    "build_transposed",
    "check_lists",
    "lists_are_top_k",
    "pbsa_attention",
    "pbsa_attention_with_lse",
    "pbsa_torch",
    "pool_blocks",
    "reference",
    "resolve_top_k",
    "topk_blocks",
]
