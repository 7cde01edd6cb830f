"""The benchmark's problem at Wan2.1-1.3B shapes: one chunk of 3 frames x 1560 tokens, 12 heads x 128,
a key sequence of F frames whose last 3 are the chunk; its block lists and the pairs they compute.

The settings below are read when a function runs (``problem.HEADS``), so ``kernel_bench.tiny()`` and
the tests can shrink them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TOKENS_PER_FRAME, CHUNK_FRAMES, HEADS, HEAD_DIM = 1560, 3, 12, 128
DEVICE, DTYPE = "cuda", torch.bfloat16  # timings; kernel_bench.tiny(): the CPU


def make_lists(B, H, NSc, NQB, density, device, seed=0):
    """Per-head lists of ``round(density * NS)`` blocks per row: the first half of the budget is a
    persistent segment (the oldest cached blocks, shared by all rows), the rest random local blocks
    among the later slots with the row's own block (slot NSc + r) always kept.
    Returns index (B, H, NQB, K) int32, count (B, H, NQB) int32 and K."""
    NS = NSc + NQB
    K = min(NS, max(1, round(density * NS)))
    n_p = min(NSc, K // 2)
    g = torch.Generator(device=device).manual_seed(seed)
    score = torch.rand(B, H, NQB, NS - n_p, generator=g, device=device)  # candidates n_p .. NS - 1
    own = NSc - n_p + torch.arange(NQB, device=device)
    score[:, :, torch.arange(NQB, device=device), own] = 2.0  # own block always kept
    local = score.topk(K - n_p, dim=-1).indices.sort(-1).values + n_p  # (B, H, NQB, K - n_p)
    persistent = torch.arange(n_p, device=device).expand(B, H, NQB, n_p)
    index = torch.cat([persistent, local], -1).to(torch.int32)  # (B, H, NQB, K)
    count = torch.full((B, H, NQB), K, dtype=torch.int32, device=device)
    return index, count, K


def make_problem(frames, BLK, dtype, device, seed=0):
    """q (1, H, Tq, D); flat keys (1, H, Lk, D) = [cache rounded up to whole blocks ; chunk]; the same keys
    as a slot pool (1, NS, H, BLK, D) and block_len (1, NS) (only the chunk's last block is short)."""
    Tq = CHUNK_FRAMES * TOKENS_PER_FRAME
    NSc = math.ceil((frames - CHUNK_FRAMES) * TOKENS_PER_FRAME / BLK)
    NQB = math.ceil(Tq / BLK)
    Lc = NSc * BLK
    g = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(1, HEADS, Tq, HEAD_DIM, generator=g, device=device, dtype=dtype)
    k = torch.randn(1, HEADS, Lc + Tq, HEAD_DIM, generator=g, device=device, dtype=dtype)  # (1, H, Lk, D)
    v = torch.randn(1, HEADS, Lc + Tq, HEAD_DIM, generator=g, device=device, dtype=dtype)
    pad = NQB * BLK - Tq

    def as_pool(x):  # (1, H, Lk, D) -> (1, NS, H, BLK, D)
        return F.pad(x, (0, 0, 0, pad)).view(1, HEADS, NSc + NQB, BLK, HEAD_DIM).transpose(1, 2).contiguous()

    block_len = torch.full((1, NSc + NQB), BLK, dtype=torch.int32, device=device)
    block_len[:, -1] = Tq - (NQB - 1) * BLK
    return dict(q=q, k=k, v=v, kp=as_pool(k), vp=as_pool(v), block_len=block_len, NSc=NSc, NQB=NQB, Tq=Tq, Lk=Lc + Tq,
                frames=frames)


def computed_pairs(index, count, block_len, Tq, BLK):
    """Query x key token pairs the lists compute, summed over batch and heads."""
    B, Hi, NQB, K = index.shape
    q_rows = (Tq - torch.arange(NQB, device=index.device) * BLK).clamp(max=BLK)  # (NQB,)
    valid = torch.arange(K, device=index.device) < count[..., None]
    keys = torch.where(valid, block_len[0][index.long().clamp(min=0)], 0).sum(-1)  # (B, Hi, NQB)
    return int((keys * q_rows).sum()) * (HEADS // Hi)
