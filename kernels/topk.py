"""Block selection, the public entry point: per query block, the top-K candidates by pooled score.

Two implementations with the same arguments and results (up to rounding and ties) run behind
``topk_blocks``: a few PyTorch ops (``blocks.topk_blocks_torch``) and one fused Triton kernel
(``topk_triton.topk_blocks_triton``). Triton is imported only when a Triton path is asked for
(``impl="triton"``, or ``"auto"`` on CUDA).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from .blocks import topk_blocks_torch
from .pbsa import Impl


def chosen_impl(pooled_q: Tensor, pooled_k: Tensor, k: int, forced: Optional[Tensor] = None,
                shared_heads: bool = False, impl: Impl = "auto") -> str:
    """``"torch"`` or ``"triton"``: what ``topk_blocks`` runs for these arguments. ``"triton"`` is the
    fused kernel up to ``topk_triton.MAX_CANDIDATES`` candidates, the PyTorch ops past them; ``"auto"``
    is the PyTorch ops off CUDA or without Triton, and on CUDA whichever ``topk_triton.auto_impl`` keeps
    for the problem's class (timed on its first call)."""
    if impl not in ("auto", "torch", "triton"):
        raise ValueError(f"impl must be 'auto', 'torch' or 'triton'; got {impl!r}")
    if impl == "torch" or (impl == "auto" and not pooled_q.is_cuda):  # Triton is not imported off CUDA
        return "torch"
    try:
        from . import topk_triton  # imported on first use
    except ImportError:
        if impl == "triton":
            raise
        return "torch"  # auto without Triton
    if impl == "auto":
        return topk_triton.auto_impl(pooled_q, pooled_k, k, forced=forced, shared_heads=shared_heads)
    return "triton" if pooled_k.shape[2] <= topk_triton.MAX_CANDIDATES else "torch"


def topk_blocks(
    pooled_q: Tensor,
    pooled_k: Tensor,
    k: int,
    forced: Optional[Tensor] = None,
    shared_heads: bool = False,
    impl: Impl = "auto",
) -> tuple[Tensor, Tensor]:
    """Per query block, the ``k`` candidates with the highest softmax(pooled_q . pooled_k / sqrt(d)).

    pooled_q: (B, H, NQB, D); pooled_k: (B, H, NC, D); forced: (NQB,) long, a candidate each row keeps
    whatever its score (counted inside ``k``, so k >= 1 when given); shared_heads: scores summed over
    heads, one list per row. Returns index (B, Hs, NQB, K) long, rows sorted ascending, and
    count (B, Hs, NQB) long, all equal to K = min(k, NC) (Hs = 1 if shared_heads else H).

    impl: "torch" = the PyTorch ops, "triton" = the fused kernel, "auto" = either (``chosen_impl``).
    """
    if chosen_impl(pooled_q, pooled_k, k, forced, shared_heads, impl) == "triton":
        from .topk_triton import topk_blocks_triton

        return topk_blocks_triton(pooled_q, pooled_k, k, forced=forced, shared_heads=shared_heads)
    return topk_blocks_torch(pooled_q, pooled_k, k, forced=forced, shared_heads=shared_heads)
