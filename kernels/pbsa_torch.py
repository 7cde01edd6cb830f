"""PBSA in plain PyTorch: gather each query block's listed K/V blocks, one masked softmax per row.

The CPU implementation of the ``pbsa`` backend and the Triton kernel's twin; autograd runs through torch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

GATHER_BUDGET = 1 << 24  # elements of gathered K (and of scores) per row chunk, bounds peak memory


def pbsa_torch(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    count: Tensor,
    block_len: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention over a slot pool; see ``worldkit_kernels.pbsa_attention`` for the contract.

    Returns out (B, H, Tq, D) in q.dtype and lse (B, H, Tq) in fp32 (fp64 for fp64 inputs).
    """
    B, H, Tq, D = q.shape
    BLK = k.shape[3]
    Hi, NQB, MAXK = index.shape[1:]
    dev = q.device
    cdt = torch.promote_types(q.dtype, torch.float32)
    scale = D**-0.5 if scale is None else scale

    qb = F.pad(q, (0, 0, 0, NQB * BLK - Tq)).view(B, H, NQB, BLK, D)  # (B, H, NQB, BLK, D)
    kh, vh = k.transpose(1, 2), v.transpose(1, 2)  # (B, H, NS, BLK, D)
    valid = torch.arange(MAXK, device=dev) < count[..., None]  # (B, Hi, NQB, MAXK)
    slot = torch.where(valid, index.long(), 0)  # padding reads slot 0, masked below
    bi = torch.arange(B, device=dev).view(B, 1, 1, 1)
    if block_len is None:
        tok_ok = valid[..., None].expand(B, Hi, NQB, MAXK, BLK)
    else:
        tok_ok = valid[..., None] & (torch.arange(BLK, device=dev) < block_len.long()[bi, slot][..., None])
    tok_ok = tok_ok.reshape(B, Hi, NQB, 1, MAXK * BLK)  # (B, Hi, NQB, 1, MAXK * BLK)
    slot = slot.expand(B, H, NQB, MAXK)
    hi = torch.arange(H, device=dev).view(1, H, 1, 1)
    # gather whole blocks as rows of one flat table: index_select copies them far faster than
    # advanced indexing over (batch, head, slot)
    flat = ((bi * H + hi) * k.shape[1] + slot)  # (B, H, NQB, MAXK) row ids into (B * H * NS, BLK * D)
    k_rows, v_rows = kh.reshape(-1, BLK * D), vh.reshape(-1, BLK * D)

    rows_per_chunk = max(1, GATHER_BUDGET // (B * H * MAXK * BLK * max(D, BLK)))
    outs, lses = [], []
    for r0 in range(0, NQB, rows_per_chunk):
        rs = slice(r0, r0 + rows_per_chunk)
        ids = flat[:, :, rs]
        R = ids.shape[2]
        kg = k_rows.index_select(0, ids.reshape(-1)).view(B, H, R, MAXK, BLK, D).to(cdt)  # (B, H, R, MAXK, BLK, D)
        vg = v_rows.index_select(0, ids.reshape(-1)).view(B, H, R, MAXK, BLK, D).to(cdt)
        s = torch.einsum("bhrqd,bhrktd->bhrqkt", qb[:, :, rs].to(cdt), kg).reshape(B, H, R, BLK, MAXK * BLK)
        s = (s * scale).masked_fill(~tok_ok[:, :, rs], float("-inf"))  # (B, H, R, BLK, MAXK * BLK)
        m = s.amax(-1, keepdim=True).detach()  # the shift does not change the result, only its range
        m = torch.where(torch.isfinite(m), m, 0.0)
        p = torch.exp(s - m)  # (B, H, R, BLK, MAXK * BLK), exactly 0 where masked
        l = p.sum(-1, keepdim=True)  # (B, H, R, BLK, 1)
        l_safe = torch.where(l > 0, l, 1.0)  # empty rows: out 0, lse -inf, no NaN in backward
        outs.append((p @ vg.reshape(B, H, R, MAXK * BLK, D)) / l_safe)  # (B, H, R, BLK, D)
        lses.append(torch.where(l > 0, m + l_safe.log(), float("-inf"))[..., 0])  # (B, H, R, BLK)
    out = torch.cat(outs, 2).reshape(B, H, NQB * BLK, D)[:, :, :Tq]  # (B, H, Tq, D)
    lse = torch.cat(lses, 2).reshape(B, H, NQB * BLK)[:, :, :Tq]  # (B, H, Tq)
    return out.to(q.dtype), lse
