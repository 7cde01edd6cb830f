"""Block helpers for PBSA: mean pooling, row-wise top-K selection in PyTorch, list checks and transposed
(slot -> rows) lists."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def pool_blocks(x: Tensor, block: int) -> Tensor:
    """Mean of each block of ``block`` consecutive tokens (the last block may be short).

    x: (B, H, T, D) -> (B, H, ceil(T / block), D), in x.dtype (accumulated in fp32 or better).
    """
    B, H, T, D = x.shape
    nb, full = -(-T // block), T // block
    acc = torch.promote_types(x.dtype, torch.float32)
    sums = x[:, :, : full * block].reshape(B, H, full, block, D).sum(3, dtype=acc)  # (B, H, full, D), no copy of x
    if full < nb:  # the short last block
        sums = torch.cat([sums, x[:, :, full * block:].sum(2, keepdim=True, dtype=acc)], 2)  # (B, H, nb, D)
    n = torch.full((nb,), block, dtype=acc, device=x.device)
    n[-1] = T - (nb - 1) * block
    return (sums / n[:, None]).to(x.dtype)  # (B, H, nb, D)


def resolve_top_k(top_k: float | int, candidates: int) -> int:
    """Blocks kept per row: an int >= 1 is a count, a float in (0, 1] a fraction (rounded up)."""
    if isinstance(top_k, float):
        k = math.ceil(top_k * candidates - 1e-9)
    else:
        k = top_k
    return max(0, min(k, candidates))


def kept_per_row(k: int, candidates: int, forced: bool) -> int:
    """Blocks a top-K row keeps: ``k``, at least 1 when a block is forced (it counts inside K), at most
    the candidates."""
    return min(max(k, 1 if forced else 0), candidates)


def block_scores(pooled_q: Tensor, pooled_k: Tensor, shared_heads: bool, dtype: torch.dtype) -> Tensor:
    """softmax(pooled_q . pooled_k / sqrt(d)) over the candidates, computed in ``dtype`` (also under
    autocast; fp32 matmuls may run in TF32 where enabled), summed over heads when shared:
    (B, 1 if shared_heads else H, NQB, NC)."""
    with torch.autocast(pooled_q.device.type, enabled=False):
        logits = torch.einsum("bhqd,bhcd->bhqc", pooled_q.to(dtype), pooled_k.to(dtype)) / math.sqrt(pooled_q.shape[-1])
    score = logits.softmax(-1)  # (B, H, NQB, NC)
    return score.sum(1, keepdim=True) if shared_heads else score


def topk_blocks_torch(
    pooled_q: Tensor,
    pooled_k: Tensor,
    k: int,
    forced: Optional[Tensor] = None,
    shared_heads: bool = False,
) -> tuple[Tensor, Tensor]:
    """``topk.topk_blocks`` in a few PyTorch ops (the reference; ``impl="torch"``): fp32 scores (the
    matmul may run in TF32 where enabled), then ``torch.topk``."""
    NQB, NC = pooled_q.shape[2], pooled_k.shape[2]
    k = kept_per_row(k, NC, forced is not None)
    score = block_scores(pooled_q, pooled_k, shared_heads, torch.float32)  # (B, Hs, NQB, NC)
    if forced is not None:
        rows = torch.arange(NQB, device=score.device)
        score[:, :, rows, forced] = float("inf")
    index = score.topk(k, dim=-1, sorted=False).indices.sort(-1).values  # (B, Hs, NQB, K)
    count = torch.full(index.shape[:3], k, dtype=torch.long, device=index.device)  # (B, Hs, NQB)
    return index, count


def lists_are_top_k(
    pooled_q: Tensor, pooled_k: Tensor, k: int, index: Tensor, count: Tensor,
    forced: Optional[Tensor] = None, shared_heads: bool = False, atol: float = 1e-5,
) -> bool:
    """Whether ``index``/``count`` are what ``topk_blocks`` promises, checked against fp64 scores: K
    distinct candidates per row, ascending, the forced one kept, and no candidate left out that scores
    more than ``atol`` above one chosen freely."""
    B, H, NQB, _ = pooled_q.shape
    NC = pooled_k.shape[2]
    K = kept_per_row(k, NC, forced is not None)
    Hs = 1 if shared_heads else H
    if tuple(index.shape) != (B, Hs, NQB, K) or not bool((count == K).all()):
        return False
    if K == 0:
        return True
    idx = index.long()
    if not bool(((idx >= 0) & (idx < NC)).all()) or not bool((idx[..., 1:] > idx[..., :-1]).all()):
        return False
    score = block_scores(pooled_q, pooled_k, shared_heads, torch.float64)  # (B, Hs, NQB, NC)
    chosen = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, idx, True)
    free = chosen.clone()
    if forced is not None:
        own = forced.to(score.device).long().view(1, 1, NQB, 1).expand(B, Hs, NQB, 1)
        if not bool(chosen.gather(-1, own).all()):
            return False
        free.scatter_(-1, own, False)
    inf = torch.tensor(float("inf"), dtype=score.dtype, device=score.device)
    low = torch.where(free, score, inf).amin(-1)  # the lowest freely chosen score per row
    high = torch.where(chosen, -inf, score).amax(-1)  # the highest left out
    return bool((high <= low + atol).all())


def check_lists(index: Tensor, count: Tensor, num_slots: int) -> None:
    """Raise ``ValueError`` naming the first row whose list is not a set of slots: a count outside
    [0, MAXK], an entry outside [0, num_slots), or a slot listed twice (the dense reference would read it
    once, a gathering kernel twice). index: (B, Hi, NQB, MAXK); count: (B, Hi, NQB). Reads the lists on
    the host: on CUDA it waits for the device."""
    MAXK = index.shape[-1]
    bad = (count < 0) | (count > MAXK)  # (B, Hi, NQB)
    if bool(bad.any()):
        b, h, r = bad.nonzero()[0].tolist()
        raise ValueError(f"count: row (batch {b}, head {h}, query block {r}) has {int(count[b, h, r])} entries; "
                         f"must be in 0..{MAXK} (the list's length)")
    valid = torch.arange(MAXK, device=index.device) < count[..., None].long()  # (B, Hi, NQB, MAXK)
    idx = torch.where(valid, index.long(), -1)
    outside = valid & ((idx < 0) | (idx >= num_slots))
    if bool(outside.any()):
        b, h, r, j = outside.nonzero()[0].tolist()
        raise ValueError(f"index: row (batch {b}, head {h}, query block {r}) lists slot {int(idx[b, h, r, j])}; "
                         f"slots are 0..{num_slots - 1}")
    ordered = idx.sort(-1).values
    twice = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)  # (B, Hi, NQB, MAXK - 1)
    if bool(twice.any()):
        b, h, r, j = twice.nonzero()[0].tolist()
        raise ValueError(f"index: row (batch {b}, head {h}, query block {r}) lists slot {int(ordered[b, h, r, j])} "
                         "twice; each slot at most once per row")


def build_transposed(index: Tensor, count: Tensor, num_slots: int) -> tuple[Tensor, Tensor]:
    """Invert per-row slot lists into per-slot row lists, on the device (no host sync).

    index: (B, Hi, NQB, MAXK) slot ids, entries [0, count) valid; count: (B, Hi, NQB).
    Returns tindex (B, Hi, NS, NQB) int32, the query blocks reading each slot in ascending order,
    padded with -1, and tcount (B, Hi, NS) int32. Assumes no duplicate slot within a row.
    """
    B, Hi, NQB, MAXK = index.shape
    dev = index.device
    valid = torch.arange(MAXK, device=dev) < count[..., None]  # (B, Hi, NQB, MAXK)
    slot = torch.where(valid, index.long(), num_slots)  # invalid entries go to a dump column
    member = torch.zeros(B, Hi, NQB, num_slots + 1, dtype=torch.bool, device=dev)
    member.scatter_(3, slot, True)
    member = member[..., :num_slots].transpose(2, 3)  # (B, Hi, NS, NQB)
    tcount = member.sum(-1, dtype=torch.int32)  # (B, Hi, NS)
    rows = torch.arange(NQB, device=dev)
    key = torch.where(member, rows, rows + NQB)  # readers first, each group ascending
    order = key.sort(-1).values  # (B, Hi, NS, NQB)
    tindex = torch.where(order < NQB, order, -1).to(torch.int32)
    return tindex, tcount
