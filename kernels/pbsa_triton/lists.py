"""The slot lists as the PBSA kernels read them, on the host and inside the kernels.

Inside the kernels (``_list_entry``, ``_full_end``, ``_entry``, ``_step``): the forward and dQ walk a
query block's list a step ahead. On the host: with ragged blocks each list entry carries its slot's
valid rows (``_pack``: slot << LEN_BITS | rows, one scalar load per step, so the K/V prefetch is one
indirection deep) and each row lists its full slots first; the dK/dV kernel walks the transposed lists
(``_transposed``: ``blocks.build_transposed`` in two small kernels).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import _pow2

# With ragged blocks, list entries carry the slot and its valid rows in one int32: slot << LEN_BITS | rows.
_LEN_BITS = 11
LEN_BITS: tl.constexpr = tl.constexpr(_LEN_BITS)
LEN_MASK: tl.constexpr = tl.constexpr((1 << _LEN_BITS) - 1)


@triton.jit
def _list_entry(row_ptr, stride, pos, stop):
    """Entry ``pos`` of a list, 0 at or past ``stop``: the loops load the next step's entry a step ahead
    and carry it, so the tiles whose addresses depend on it are prefetched num_stages - 1 steps ahead
    (the index load spends no pipeline stage), and nothing past the list is read."""
    return tl.load(row_ptr + pos * stride, mask=pos < stop, other=0)


@triton.jit
def _full_end(NFULL, nf_off, lo, hi, HAS_BLEN: tl.constexpr, EVEN_K: tl.constexpr, TILE: tl.constexpr,
              BLK: tl.constexpr):
    """Where the unmasked steps over [lo, hi) end: every slot is full (no lengths), the row's full slots
    come first (with lengths, the packed lists hold them first), or the tile reaches past every slot."""
    if EVEN_K:
        return hi
    if HAS_BLEN and TILE == BLK:
        return tl.minimum(tl.maximum(tl.load(NFULL + nf_off), lo), hi)
    return lo


@triton.jit
def _entry(code, PACKED: tl.constexpr, BLK: tl.constexpr):
    """A list entry's slot (int64) and valid rows: packed (slot << LEN_BITS | rows) or a bare slot."""
    if PACKED:
        return (code >> LEN_BITS).to(tl.int64), code & LEN_MASK
    return code.to(tl.int64), code * 0 + BLK


@triton.jit
def _step(idx_row, s_ik, it, stop, code_next, offs_n0,
          BLK: tl.constexpr, BLOCK_N: tl.constexpr, NSUB: tl.constexpr, PACKED: tl.constexpr):
    """Step ``it`` of a walk over list entries (NSUB key sub-tiles per entry): its slot, the slot's
    valid rows, the sub-tile's key columns and which of them are valid, and the entry a step ahead
    (loaded now, so its latency hides behind this step's work)."""
    s, kl = _entry(code_next, PACKED, BLK)
    code_next = _list_entry(idx_row, s_ik, (it + 1) // NSUB, stop)
    offs_n = (it % NSUB) * BLOCK_N + offs_n0
    return s, offs_n, offs_n < kl, code_next



@triton.jit
def _pack_kernel(
    IDX, CNT, BLEN, OUT, NF,
    s_ib, s_ih, s_ir, s_ik, s_cb, s_ch, s_cr, s_lb, s_ls,
    Hi, NQB, NS, MAXK,
    BLK: tl.constexpr, KP: tl.constexpr,
):
    """One row's list packed (slot << LEN_BITS | valid rows) and partitioned: full slots first, then
    short ones, each in list order (a stable partition by prefix sums); the full count to NF."""
    row = tl.program_id(0)
    r = row % NQB
    b = (row // NQB) // Hi
    h = (row // NQB) % Hi
    offs = tl.arange(0, KP)
    n = tl.minimum(tl.load(CNT + b * s_cb + h * s_ch + r * s_cr), MAXK)
    valid = offs < n
    slot = tl.load(IDX + b * s_ib + h * s_ih + r * s_ir + offs * s_ik, mask=valid, other=0)
    slot = tl.minimum(tl.maximum(slot, 0), NS - 1)
    rows = tl.load(BLEN + b * s_lb + slot.to(tl.int64) * s_ls, mask=valid, other=0)
    rows = tl.minimum(tl.maximum(rows, 0), BLK)
    full = (valid & (rows == BLK)).to(tl.int32)
    short = (valid & (rows < BLK)).to(tl.int32)
    n_full = tl.sum(full, 0)
    pos = tl.where(full == 1, tl.cumsum(full, 0) - 1, n_full + tl.cumsum(short, 0) - 1)
    tl.store(OUT + row.to(tl.int64) * MAXK + pos, (slot << LEN_BITS) | rows, mask=valid)
    tl.store(NF + row, n_full)


def _pack(index: Tensor, count: Tensor, block_len: Tensor, BLK: int) -> tuple[Tensor, Tensor]:
    """The lists as the kernels read them when blocks are ragged, built on the device in one launch:
    each entry packs the slot and its valid rows (slot << LEN_BITS | rows, one scalar load per step),
    and each row lists its full slots first, then its short ones (each in list order), so full slots
    run without masks. ``_pack_torch`` is the reference.
    index: (B, Hi, NQB, MAXK), entries past a row's count unread; count: (B, Hi, NQB); block_len: (B, NS).
    Returns lists (B, Hi, NQB, MAXK) int32 (entries past the count unset) and the full slots per row
    (B, Hi, NQB) int32, both contiguous."""
    B, NS = block_len.shape
    if NS == 0 or index.numel() == 0:  # nothing to read: every row is empty
        return index.to(torch.int32), torch.zeros(count.shape, dtype=torch.int32, device=count.device)
    _check_pack(BLK, NS)
    Bi, Hi, NQB, MAXK = index.shape
    lists = torch.empty(index.shape, dtype=torch.int32, device=index.device)
    nfull = torch.empty(Bi, Hi, NQB, dtype=torch.int32, device=count.device)
    count = count.expand(Bi, Hi, NQB)
    _pack_kernel[(Bi * Hi * NQB,)](
        index, count, block_len, lists, nfull,
        *index.stride(), *count.stride(), *block_len.stride(),
        Hi, NQB, NS, MAXK,
        BLK=BLK, KP=_pow2(MAXK),
    )
    return lists, nfull


def _lists(index: Tensor, count: Tensor, block_len: Optional[Tensor], BLK: int) -> tuple[Tensor, Tensor, Tensor]:
    """What the forward and dQ kernels read: the lists (packed when blocks are ragged), the counts
    (contiguous) and the full-slot counts, which share the counts' strides (the counts themselves when
    there are no lengths: every slot is full)."""
    count = count.contiguous()
    if block_len is None:
        return index, count, count
    lists, nfull = _pack(index, count, block_len, BLK)
    return lists, count, nfull


@triton.jit
def _mark_kernel(
    IDX, CNT, MEM,
    s_ib, s_ih, s_ir, s_ik, s_cb, s_ch, s_cr,
    Hi, NQB, NS, MAXK,
    NQBP: tl.constexpr, KC: tl.constexpr,
):
    """Membership of one row's list: MEM[bh, slot, row] = 1 for each of its first count entries (MEM is
    (B * Hi, NS, NQBP) uint8, zeroed)."""
    pid = tl.program_id(0)
    r = pid % NQB
    bh = pid // NQB
    b = (bh // Hi).to(tl.int64)
    h = (bh % Hi).to(tl.int64)
    n = tl.minimum(tl.load(CNT + b * s_cb + h * s_ch + r * s_cr), MAXK)
    for j0 in range(0, MAXK, KC):
        j = j0 + tl.arange(0, KC)
        slot = tl.load(IDX + b * s_ib + h * s_ih + r * s_ir + j * s_ik, mask=j < n, other=-1).to(tl.int64)
        ok = (j < n) & (slot >= 0) & (slot < NS)
        tl.store(MEM + (bh.to(tl.int64) * NS + slot) * NQBP + r, tl.full([KC], 1, tl.uint8), mask=ok)


@triton.jit
def _compact_kernel(
    MEM, TIDX, TCNT,
    NQB, NS,
    BLOCK_S: tl.constexpr, NQBP: tl.constexpr,
):
    """Each slot's readers ascending, then -1, from its membership row: readers and non-readers are placed
    by prefix sums, so every position of the slot's row of TIDX is written once; its count to TCNT."""
    bh = tl.program_id(0).to(tl.int64)
    slots = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)  # (BLOCK_S,)
    rows = tl.arange(0, NQBP)  # (NQBP,)
    slot_ok = slots < NS
    row_ok = rows < NQB
    at = bh * NS + slots  # (BLOCK_S,) int64: the slot's row of MEM and of TIDX
    member = tl.load(MEM + at[:, None] * NQBP + rows[None, :], mask=slot_ok[:, None], other=0).to(tl.int32)
    other = (row_ok[None, :] & (member == 0)).to(tl.int32)
    count = tl.sum(member, 1)  # (BLOCK_S,)
    pos = tl.where(member == 1, tl.cumsum(member, 1) - 1, count[:, None] + tl.cumsum(other, 1) - 1)
    out = tl.where(member == 1, rows[None, :], -1)
    tl.store(TIDX + at[:, None] * NQB + pos, out, mask=slot_ok[:, None] & row_ok[None, :])
    tl.store(TCNT + at, count, mask=slot_ok)


def _transposed(index: Tensor, count: Tensor, NS: int) -> tuple[Tensor, Tensor]:
    """``blocks.build_transposed`` in two launches whose work grows with the lists and the slots (not their
    product): mark each row's slots in a zeroed membership array, then compact each slot's readers.
    Returns tindex (B, Hi, NS, NQB) int32 and tcount (B, Hi, NS) int32. Entries outside [0, NS) are
    ignored; duplicates count once."""
    B, Hi, NQB, MAXK = index.shape
    tindex = torch.empty(B, Hi, NS, NQB, dtype=torch.int32, device=index.device)
    tcount = torch.empty(B, Hi, NS, dtype=torch.int32, device=index.device)
    if tindex.numel() == 0 or tcount.numel() == 0:
        return tindex, tcount.zero_()
    count = count.expand(B, Hi, NQB)
    NQBP = max(16, _pow2(NQB))
    member = torch.zeros(B * Hi, NS, NQBP, dtype=torch.uint8, device=index.device)
    if MAXK:
        _mark_kernel[(B * Hi * NQB,)](
            index, count, member,
            *index.stride(), *count.stride(),
            Hi, NQB, NS, MAXK,
            NQBP=NQBP, KC=min(128, max(16, _pow2(MAXK))),
        )
    BLOCK_S = max(1, min(16, 2048 // NQBP))
    _compact_kernel[(B * Hi, triton.cdiv(NS, BLOCK_S))](
        member, tindex, tcount, NQB, NS, BLOCK_S=BLOCK_S, NQBP=NQBP,
    )
    return tindex, tcount



def _check_pack(BLK: int, NS: int) -> None:
    if BLK >= 1 << _LEN_BITS or NS > (1 << (31 - _LEN_BITS)):
        raise ValueError(f"Triton PBSA packs slot and length in int32: needs block < {1 << _LEN_BITS} and at most "
                         f"{1 << (31 - _LEN_BITS)} slots; got block {BLK}, {NS} slots")


def _pack_torch(index: Tensor, count: Tensor, block_len: Tensor, BLK: int) -> tuple[Tensor, Tensor]:
    """``_pack`` in plain PyTorch (a sort): the reference of its kernel."""
    B, NS = block_len.shape
    if NS == 0 or index.numel() == 0:
        return index.to(torch.int32), torch.zeros(count.shape, dtype=torch.int32, device=count.device)
    _check_pack(BLK, NS)
    slot = index.long().clamp(0, NS - 1)  # (B, Hi, NQB, MAXK)
    rows = block_len.long().gather(1, slot.reshape(B, -1)).view(index.shape).clamp(0, BLK)
    valid = torch.arange(index.shape[-1], device=index.device) < count[..., None]
    kind = torch.where(valid, (rows < BLK).long(), 2)  # 0 full, 1 short, 2 padding
    order = kind.argsort(dim=-1, stable=True)
    lists = ((slot << _LEN_BITS) | rows).gather(-1, order).to(torch.int32)
    return lists, (kind == 0).sum(-1, dtype=torch.int32)


def _head_stride(t: Tensor, Hi: int, dim: int = 1) -> int:
    """Stride along the list-head dim; 0 when lists are shared by all heads (Hi == 1)."""
    return t.stride(dim) if Hi > 1 else 0

