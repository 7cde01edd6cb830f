"""Dense attention reference: the visible slots and the chunk as one key sequence, masked, torch SDPA."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from worldkit.interfaces import AttentionBackend, BlockIndex, KVView, PluginConfig


def block_tokens(q: Tensor, view: Optional[KVView], index: Optional[BlockIndex]) -> int:
    """Tokens per block: the pool's, or (no view) the chunk length over the index's query blocks."""
    if view is not None:
        return view.k.shape[3]
    Tq = q.shape[2]
    return Tq if index is None else -(-Tq // index.local.shape[2])


def gather_keys(view: Optional[KVView], k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Visible slots in reading order [always ; local], then the chunk: (B, H, NV * BLK + Tq, D)."""
    if view is None:
        return k, v
    B, H, _, D = k.shape
    vis = view.visible.to(k.device)
    pk = view.k[:, vis].permute(0, 2, 1, 3, 4).reshape(B, H, -1, D)  # (B, H, NV * BLK, D)
    pv = view.v[:, vis].permute(0, 2, 1, 3, 4).reshape(B, H, -1, D)
    return torch.cat([pk, k], 2), torch.cat([pv, v], 2)


def dense_mask_from_index(view: Optional[KVView], index: BlockIndex, Tq: int, BLK: int) -> Tensor:
    """The token mask of ``index`` over ``gather_keys``' sequence: (B, Hs, Tq, NV * BLK + Tq) bool.

    The view's ``always`` slots are visible to every query; local candidate c < NL is ``view.local[c]``,
    c >= NL is the chunk's own block c - NL (tokens [(c - NL) * BLK, ...), the last one may be short).
    """
    local, count = index.local, index.count  # (B, Hs, NQB, K), (B, Hs, NQB)
    B, Hs, NQB, K = local.shape
    dev = local.device
    NSP = 0 if view is None else view.always.numel()
    NL = 0 if view is None else view.local.numel()
    valid = torch.arange(K, device=dev) < count[..., None]  # (B, Hs, NQB, K)
    cand = torch.zeros(B, Hs, NQB, NL + NQB + 1, dtype=torch.bool, device=dev)
    cand.scatter_(3, torch.where(valid, local.long(), NL + NQB), True)  # padding to a dump column
    fixed = torch.ones(B, Hs, NQB, NSP, dtype=torch.bool, device=dev)
    cached = torch.cat([fixed, cand[..., :NL]], 3).repeat_interleave(BLK, 3)  # (B, Hs, NQB, NV * BLK)
    own_tok_block = torch.arange(Tq, device=dev) // BLK  # (Tq,)
    own = cand[..., NL:NL + NQB][..., own_tok_block]  # (B, Hs, NQB, Tq)
    mask = torch.cat([cached, own], 3)  # (B, Hs, NQB, NV * BLK + Tq)
    return mask[:, :, own_tok_block]  # (B, Hs, Tq, NV * BLK + Tq)


class SDPA(AttentionBackend):
    """Dense reference attention: gathers the visible cache, masks by the block index, torch SDPA."""

    class Config(PluginConfig):
        pass

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, view: Optional[KVView], index: Optional[BlockIndex]
    ) -> Tensor:
        keys, values = gather_keys(view, k, v)  # (B, H, Tk, D)
        if index is None:
            return F.scaled_dot_product_attention(q, keys, values)
        mask = dense_mask_from_index(view, index, q.shape[2], block_tokens(q, view, index))  # (B, Hs, Tq, Tk)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, H, Tq, D)
        return torch.where(mask.any(-1, keepdim=True), out, 0.0)  # rows that read nothing give 0
