"""Dense reference for PBSA: the block lists expanded to a token mask, one masked softmax (test oracle)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def token_mask(index: Tensor, count: Tensor, block_len: Optional[Tensor], Tq: int, NS: int, BLK: int) -> Tensor:
    """Which pool tokens each query token reads: (B, Hi, Tq, NS * BLK) bool."""
    B, Hi, NQB, MAXK = index.shape
    dev = index.device
    valid = torch.arange(MAXK, device=dev) < count[..., None]  # (B, Hi, NQB, MAXK)
    slot = torch.where(valid, index.long(), NS)
    blocks = torch.zeros(B, Hi, NQB, NS + 1, dtype=torch.bool, device=dev)
    blocks.scatter_(3, slot, True)
    blocks = blocks[..., :NS]  # (B, Hi, NQB, NS)
    if block_len is None:
        tok_ok = torch.ones(B, NS, BLK, dtype=torch.bool, device=dev)
    else:
        tok_ok = torch.arange(BLK, device=dev) < block_len[..., None].long()  # (B, NS, BLK)
    mask = blocks[..., None] & tok_ok[:, None, None]  # (B, Hi, NQB, NS, BLK)
    rows = torch.arange(Tq, device=dev) // BLK
    return mask[:, :, rows].reshape(B, Hi, Tq, NS * BLK)


def reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    count: Tensor,
    block_len: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """PBSA by a dense masked softmax, all in q's dtype (pass fp64 for an oracle). Returns (out, lse).

    q: (B, H, Tq, D); k, v: (B, NS, H, BLK, D); out: (B, H, Tq, D); lse: (B, H, Tq), -inf (and out 0)
    on rows that read nothing.
    """
    B, H, Tq, D = q.shape
    NS, BLK = k.shape[1], k.shape[3]
    scale = D**-0.5 if scale is None else scale
    mask = token_mask(index, count, block_len, Tq, NS, BLK)  # (B, Hi, Tq, NS * BLK)
    kf = k.permute(0, 2, 1, 3, 4).reshape(B, H, NS * BLK, D)  # (B, H, NS * BLK, D)
    vf = v.permute(0, 2, 1, 3, 4).reshape(B, H, NS * BLK, D)
    s = (q @ kf.transpose(-1, -2)) * scale  # (B, H, Tq, NS * BLK)
    s = s.masked_fill(~mask, float("-inf"))
    empty = ~mask.any(-1, keepdim=True)  # (B, Hi, Tq, 1)
    s = s.masked_fill(empty, 0.0)  # keeps softmax and logsumexp finite on empty rows
    p = s.softmax(-1).masked_fill(empty, 0.0)
    lse = s.logsumexp(-1).masked_fill(empty[..., 0], float("-inf"))  # (B, H, Tq)
    return p @ vf, lse
