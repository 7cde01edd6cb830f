"""Persistent Block-Sparse Attention (PBSA): the public entry points and their dispatch.

q: (B, H, Tq, D); query block r is tokens [r * BLK, min((r + 1) * BLK, Tq)), NQB = ceil(Tq / BLK).
k, v: (B, NS, H, BLK, D) a block-paged slot pool (any strides): slot s holds one block of BLK tokens.
index: (B, Hi, NQB, MAXK) int32 or int64, Hi in {1, H} (1 = one list per row shared by all heads):
    the slots each query block reads; entries [0, count) valid, padding -1; the sink/persistent segment
    first, then the local one, each sorted, no duplicates within a row.
count: (B, Hi, NQB). block_len: (B, NS) valid tokens per slot (ragged tails), None = all BLK valid.
There is no causal mask inside a block: a chunk attends to itself fully.
Lists that break the contract (a slot twice in a row, a slot outside the pool, a count past the list)
are refused with ``ValueError`` (``check``: by default on CPU tensors; on CUDA the check would wait for
the device, so it runs there only when asked).
"""
from __future__ import annotations

from typing import Literal, Optional

from torch import Tensor

from .blocks import check_lists
from .pbsa_torch import pbsa_torch

Impl = Literal["auto", "torch", "triton"]


def pbsa_attention_with_lse(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    count: Tensor,
    block_len: Optional[Tensor] = None,
    scale: Optional[float] = None,
    impl: Impl = "auto",
    check: Optional[bool] = None,
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention; returns out (B, H, Tq, D) in q.dtype and lse (B, H, Tq), the natural
    log-sum-exp in fp32 (-inf on rows that read nothing; their output is 0).

    impl: "auto" = Triton on CUDA tensors, the PyTorch path elsewhere; "triton" / "torch" force one.
    check: refuse lists that are not sets of pool slots (``check_lists``); None = on CPU tensors only.
    """
    B, H, Tq, D = q.shape
    NS, BLK = k.shape[1], k.shape[3]
    if k.shape != (B, NS, H, BLK, D) or v.shape != k.shape:
        raise ValueError(f"k, v must be (B, NS, H, BLK, D) = {(B, NS, H, BLK, D)}; got {tuple(k.shape)}, {tuple(v.shape)}")
    NQB = -(-Tq // BLK)
    if index.dim() != 4 or index.shape[0] != B or index.shape[1] not in (1, H) or index.shape[2] != NQB:
        raise ValueError(f"index must be (B, 1 or H, NQB, MAXK) with B={B}, H={H}, NQB={NQB}; got {tuple(index.shape)}")
    if count.shape != index.shape[:3]:
        raise ValueError(f"count must be {tuple(index.shape[:3])}; got {tuple(count.shape)}")
    if block_len is not None and block_len.shape != (B, NS):
        raise ValueError(f"block_len must be (B, NS) = {(B, NS)}; got {tuple(block_len.shape)}")
    if check or (check is None and not index.is_cuda):
        check_lists(index, count, NS)
    if impl == "auto":
        impl = "triton" if q.is_cuda else "torch"
    if impl == "torch":
        return pbsa_torch(q, k, v, index, count, block_len, scale)
    if impl == "triton":
        from .pbsa_triton import pbsa_triton  # imported on first use: Triton is optional on CPU

        return pbsa_triton(q, k, v, index, count, block_len, scale)
    raise ValueError(f"impl must be 'auto', 'torch' or 'triton'; got {impl!r}")


def pbsa_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    count: Tensor,
    block_len: Optional[Tensor] = None,
    scale: Optional[float] = None,
    impl: Impl = "auto",
    check: Optional[bool] = None,
) -> Tensor:
    """Block-sparse attention output (B, H, Tq, D); see ``pbsa_attention_with_lse``."""
    return pbsa_attention_with_lse(q, k, v, index, count, block_len, scale, impl, check)[0]
