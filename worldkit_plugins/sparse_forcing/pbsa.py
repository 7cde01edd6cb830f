"""PBSA backend: the chunk reads the view's always-read slots (sink, persistent) + its selected local blocks,
through worldkit_kernels."""
from __future__ import annotations

from dataclasses import replace
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from worldkit.interfaces import AttentionBackend, BlockIndex, KVView, PluginConfig
from worldkit_kernels import pbsa_attention, pbsa_attention_with_lse
from worldkit_plugins.sparse_forcing.kernels import ReportsKernels


def chunk_blocks(x: Tensor, BLK: int) -> Tensor:
    """The chunk's tokens as slots, the tail zero-padded: (B, H, Tq, D) -> (B, NQB, H, BLK, D)."""
    B, H, Tq, D = x.shape
    NQB = -(-Tq // BLK)
    return F.pad(x, (0, 0, 0, NQB * BLK - Tq)).view(B, H, NQB, BLK, D).transpose(1, 2)


def slot_lists(view: Optional[KVView], index: Optional[BlockIndex], NS: int, NQB: int, B: int) -> tuple[Tensor, Tensor]:
    """Per query block, the slots it reads in a pool of the view's NS slots followed by the chunk's NQB
    blocks: [the view's always-read slots (sink, persistent), sorted ; selected local, sorted]. Returns index (B, Hs, NQB, MAXK)
    int32 padded with -1 and count (B, Hs, NQB) int32; built on the device, no host sync."""
    dev = view.k.device if view is not None else index.local.device
    empty = torch.empty(0, dtype=torch.long, device=dev)
    fixed = empty if view is None else view.always.to(dev).sort().values  # (NSP,)
    cached = empty if view is None else view.local.to(dev)  # (NL,)
    cand_slot = torch.cat([cached, NS + torch.arange(NQB, device=dev)])  # (NL + NQB,) candidate -> slot
    if index is None:
        local = cand_slot.sort().values.expand(B, 1, NQB, -1)  # (B, 1, NQB, NL + NQB)
        lcount = torch.full((B, 1, NQB), cand_slot.numel(), dtype=torch.long, device=dev)
    else:
        lcount = index.count.long()  # (B, Hs, NQB)
        valid = torch.arange(index.local.shape[3], device=dev) < lcount[..., None]  # (B, Hs, NQB, K)
        local = torch.where(valid, cand_slot[index.local.long().clamp(min=0)], NS + NQB).sort(-1).values
        local = torch.where(valid, local, -1)  # valid entries sorted to the front, padding -1
    Hs = local.shape[1]
    slots = torch.cat([fixed.expand(B, Hs, NQB, -1), local], 3).to(torch.int32)  # (B, Hs, NQB, NSP + K)
    return slots, (lcount + fixed.numel()).to(torch.int32)


def fused_cpu(q: Tensor) -> bool:
    """Inference in fp32 on the CPU: PyTorch's fused flash kernel, which returns the log-sum-exp too.
    (Its backward ignores a gradient on the log-sum-exp, so training takes the explicit paths.)"""
    return q.device.type == "cpu" and q.dtype == torch.float32 and not torch.is_grad_enabled()


def _flash_cpu(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """out (B, H, Tq, D) and lse (B, H, Tq) of the fused CPU kernel (no mask)."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, scale=scale)[:2]


def shared_attention(q: Tensor, pool_k: Tensor, pool_v: Tensor, slots: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Dense attention of every query over the same full slots (the view's always-read ones): out (B, H, Tq, D)
    and lse (B, H, Tq), in at least fp32. slots: (NF,) ids into the pool (B, NS, H, BLK, D)."""
    B, H, Tq, D = q.shape
    cdt = torch.promote_types(q.dtype, torch.float32)
    kf = pool_k.index_select(1, slots).permute(0, 2, 1, 3, 4).reshape(B, H, -1, D).to(cdt)  # (B, H, NF * BLK, D)
    vf = pool_v.index_select(1, slots).permute(0, 2, 1, 3, 4).reshape(B, H, -1, D).to(cdt)
    if fused_cpu(q):
        return _flash_cpu(q, kf, vf, scale)
    s = (q.to(cdt) @ kf.transpose(-1, -2)) * scale  # (B, H, Tq, NF * BLK)
    m = s.amax(-1, keepdim=True).detach()
    p = torch.exp(s - m)
    l = p.sum(-1, keepdim=True)  # (B, H, Tq, 1), >= 1
    return (p @ vf) / l, (m + l.log())[..., 0]


def merge(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> Tensor:
    """Two attentions over disjoint key sets as one softmax over their union."""
    lse = torch.logaddexp(lse_a, lse_b)  # (B, H, Tq)
    safe = torch.where(torch.isfinite(lse), lse, 0.0)
    wa, wb = torch.exp(lse_a - safe)[..., None], torch.exp(lse_b - safe)[..., None]
    return torch.where(torch.isfinite(lse)[..., None], wa * out_a + wb * out_b, 0.0)


class PBSA(ReportsKernels, AttentionBackend):
    """Persistent block-sparse attention over the always-read slots + selected local blocks (Triton on CUDA)."""

    class Config(PluginConfig):
        impl: Literal["auto", "torch", "triton"] = "auto"

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, view: Optional[KVView], index: Optional[BlockIndex]
    ) -> Tensor:
        B, H, Tq, D = q.shape
        if view is None and index is None:  # nothing cached, nothing selected: plain dense attention
            return F.scaled_dot_product_attention(q, k, v)
        BLK = view.k.shape[3] if view is not None else -(-Tq // index.local.shape[2])
        NQB = -(-Tq // BLK)
        if view is not None and view.k.dtype != q.dtype:  # e.g. bf16 autocast over an fp32 cache:
            view = replace(view, k=view.k.to(q.dtype), v=view.v.to(q.dtype))  # attend in the compute dtype
        k, v = k.to(q.dtype), v.to(q.dtype)
        pool_k, pool_v = chunk_blocks(k, BLK), chunk_blocks(v, BLK)  # (B, NQB, H, BLK, D)
        if view is not None:
            pool_k = torch.cat([view.k, pool_k], 1)  # (B, NS + NQB, H, BLK, D)
            pool_v = torch.cat([view.v, pool_v], 1)
        NS = pool_k.shape[1] - NQB
        block_len = None
        if Tq % BLK:
            block_len = torch.full((B, NS + NQB), BLK, dtype=torch.int32, device=q.device)  # (B, NS + NQB)
            block_len[:, -1] = Tq - (NQB - 1) * BLK
        impl = self.config.impl if self.config.impl != "auto" else ("triton" if q.is_cuda else "torch")
        shared = None if view is None else view.always
        if impl == "torch" and shared is not None and shared.numel():
            # the always-read slots (sink, persistent) are read by every row: one dense product for them, the
            # gathered block-sparse path only for the selected local blocks, merged by log-sum-exp
            out_s, lse_s = shared_attention(q, pool_k, pool_v, shared.to(q.device), D**-0.5)
            empty = shared[:0]
            local_view = replace(view, always=empty, regions={})
            slots, count = slot_lists(local_view, index, NS, NQB, B)
            out_l, lse_l = pbsa_attention_with_lse(q, pool_k, pool_v, slots, count, block_len, impl="torch")
            return merge(out_s, lse_s, out_l.to(out_s.dtype), lse_l.to(lse_s.dtype)).to(q.dtype)
        slots, count = slot_lists(view, index, NS, NQB, B)
        return pbsa_attention(q, pool_k, pool_v, slots, count, block_len, impl=impl)
