"""PBSA forward in Triton: out and lse (the natural log-sum-exp) over each query block's slot list.

One program per (query rows, batch x head) walks that query block's slot list with an online softmax
(exp2, scale folded in, fp32 accumulators). A query block is a tile of max(16, BLK) rows (masked, so
small blocks work too), taken whole or split over programs; keys are walked in sub-tiles so K/V stages
fit shared memory. With ragged blocks the list entries carry each slot's valid rows and every row's
full slots come first, walked without masks (``lists``).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import tuner
from .common import LOG2E, _check, _prec, _tile
from .lists import _full_end, _head_stride, _list_entry, _lists, _step

# The forward's candidate launch configurations (``tuner``: the first made for the tile is the default;
# on a GPU the fastest is kept). BLOCK_M below the tile splits a query block over several programs (more
# programs per wave, fewer registers each); SPLIT > 1 splits each slot list into shares whose partial
# results are merged by log-sum-exp (more programs, and the last wave less empty, for a small extra
# pass). The order follows the tuner's timings on an H200 at the benchmark's shapes
# (benchmarks/RESULTS.md): the winners at blocks of 128 and 64 rows first. ``benchmarks/kernel_static.py``
# compiles every candidate for a CUDA target on any machine and reports its registers, spills, shared
# memory and pipelining.
FWD_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=32, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=2),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, SPLIT=2),
]


@triton.jit
def _fwd_steps(
    q, K, V, idx_row, s_ik, k_base, v_base, s_ks, s_vs, s_kt, s_kd, s_vt, s_vd, offs_n0, offs_d,
    m_i, l_i, acc, start, stop, qk_scale,
    BLK: tl.constexpr, TILE: tl.constexpr, BLOCK_N: tl.constexpr, NSUB: tl.constexpr, PACKED: tl.constexpr,
    MASKED: tl.constexpr, PREC: tl.constexpr,
):
    """Online softmax over list entries [start, stop): unmasked (every slot full, TILE == BLK) or masked
    past each slot's length."""
    code_next = _list_entry(idx_row, s_ik, start, stop)
    for it in range(start * NSUB, stop * NSUB):
        s, offs_n, col_ok, code_next = _step(idx_row, s_ik, it, stop, code_next, offs_n0, BLK, BLOCK_N, NSUB, PACKED)
        k_ptr = K + k_base + s * s_ks + offs_n[:, None] * s_kt + offs_d[None, :] * s_kd
        v_ptr = V + v_base + s * s_vs + offs_n[:, None] * s_vt + offs_d[None, :] * s_vd
        if MASKED and TILE != BLK:  # the tile reaches past the slot
            kt = tl.load(k_ptr, mask=col_ok[:, None], other=0.0)  # (BLOCK_N, D)
        else:  # inside the slot: columns past its length are read, their scores masked below
            kt = tl.load(k_ptr)
        qk = tl.dot(q, tl.trans(kt), input_precision=PREC)  # (BLOCK_M, BLOCK_N), unscaled
        if MASKED:
            qk = tl.where(col_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # log2 units; the scale goes on the row max ...
        p = tl.exp2(qk * qk_scale - m_new[:, None])  # ... and into one multiply-add per score
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            vt = tl.load(v_ptr, mask=col_ok[:, None], other=0.0)  # (BLOCK_N, D)
        else:
            vt = tl.load(v_ptr)
        acc = tl.dot(p.to(vt.dtype), vt, acc * alpha[:, None], input_precision=PREC)  # accumulates in place
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _fwd_kernel(
    Q, K, V, IDX, CNT, NFULL, O, LSE,
    qk_scale,  # softmax scale x log2(e)
    s_qb, s_qh, s_qt, s_qd,
    s_kb, s_ks, s_kh, s_kt, s_kd,
    s_vb, s_vs, s_vh, s_vt, s_vd,
    s_ib, s_ih, s_ir, s_ik,
    s_cb, s_ch, s_cr,  # counts, and the full-slot counts (same layout)
    s_ob, s_oh, s_ot, s_od, s_os,  # s_os, s_es: stride between the partial results of a split list
    s_eb, s_eh, s_et, s_es,
    H, Tq,
    BLK: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    HAS_BLEN: tl.constexpr, PREC: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr, SPLIT: tl.constexpr,
):
    NSUB: tl.constexpr = TILE // BLOCK_N  # key sub-tiles per slot
    NSUB_M: tl.constexpr = TILE // BLOCK_M  # programs per query block, each owns BLOCK_M of its rows
    r = tl.program_id(0) // NSUB_M
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = (tl.program_id(0) % NSUB_M) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    rows = r * BLK + offs_m
    row_ok = (offs_m < BLK) & (rows < Tq)
    q_ptr = Q + b * s_qb + h * s_qh + rows[:, None] * s_qt + offs_d[None, :] * s_qd
    if EVEN_Q:  # full query blocks: no row masks
        q = tl.load(q_ptr)  # (BLOCK_M, D)
    else:
        q = tl.load(q_ptr, mask=row_ok[:, None], other=0.0)
    n = tl.load(CNT + b * s_cb + h * s_ch + r * s_cr)
    sp = tl.program_id(2)  # SPLIT > 1: this program takes one share of the list, a partial result
    per = tl.cdiv(n, SPLIT)
    lo = sp * per
    hi = tl.minimum(n, lo + per)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite, so all-masked tiles never give inf - inf
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    idx_row = IDX + b * s_ib + h * s_ih + r * s_ir
    k_base = b * s_kb + h * s_kh
    v_base = b * s_vb + h * s_vh
    mid = _full_end(NFULL, b * s_cb + h * s_ch + r * s_cr, lo, hi, HAS_BLEN, EVEN_K, TILE, BLK)  # full slots, unmasked
    if TILE == BLK:
        m_i, l_i, acc = _fwd_steps(q, K, V, idx_row, s_ik, k_base, v_base, s_ks, s_vs, s_kt, s_kd, s_vt, s_vd,
                                   offs_n0, offs_d, m_i, l_i, acc, lo, mid, qk_scale,
                                   BLK, TILE, BLOCK_N, NSUB, HAS_BLEN, False, PREC)
    if not EVEN_K:
        m_i, l_i, acc = _fwd_steps(q, K, V, idx_row, s_ik, k_base, v_base, s_ks, s_vs, s_kt, s_kd, s_vt, s_vd,
                                   offs_n0, offs_d, m_i, l_i, acc, mid, hi, qk_scale,
                                   BLK, TILE, BLOCK_N, NSUB, HAS_BLEN, True, PREC)
    nonempty = l_i > 0
    l_safe = tl.where(nonempty, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(nonempty, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))  # natural log
    o_ptr = O + sp * s_os + b * s_ob + h * s_oh + rows[:, None] * s_ot + offs_d[None, :] * s_od
    e_ptr = LSE + sp * s_es + b * s_eb + h * s_eh + rows * s_et
    if EVEN_Q:
        tl.store(o_ptr, out.to(O.dtype.element_ty))
        tl.store(e_ptr, lse)
    else:
        tl.store(o_ptr, out.to(O.dtype.element_ty), mask=row_ok[:, None])
        tl.store(e_ptr, lse, mask=row_ok)


def _forward_lists(
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, count: Tensor, block_len: Optional[Tensor], scale: float
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """Triton PBSA forward: out (B, H, Tq, D) in q.dtype, lse (B, H, Tq) fp32, and the lists it read
    (``_lists``: what the dQ kernel reads too; empty when nothing was launched)."""
    B, H, Tq, D = q.shape
    BLK = k.shape[3]
    Hi, NQB = index.shape[1], index.shape[2]
    _check(q, k, D)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, H, Tq, D)
    lse = torch.empty(B, H, Tq, dtype=torch.float32, device=q.device)  # (B, H, Tq)
    if out.numel() == 0:
        return out, lse, ()
    lists, count, nfull = _lists(index, count, block_len, BLK)
    tile = _tile(BLK)
    even = dict(EVEN_Q=tile == BLK and Tq % BLK == 0, EVEN_K=tile == BLK and block_len is None)

    def launch(c: dict) -> None:
        c = dict(c)
        split = c.pop("SPLIT", 1)
        if split > 1:  # partial results per share of each list, in fp32, merged by their log-sum-exp
            o, e = q.new_empty(split, B, H, Tq, D, dtype=torch.float32), q.new_empty(split, B, H, Tq, dtype=torch.float32)
        else:
            o, e = out[None], lse[None]  # (1, B, H, Tq, D), (1, B, H, Tq)
        _fwd_kernel[(NQB * (tile // c["BLOCK_M"]), B * H, split)](
            q, k, v, lists, count, nfull, o, e,
            scale * LOG2E,
            *q.stride(), *k.stride(), *v.stride(),
            lists.stride(0), _head_stride(lists, Hi), lists.stride(2), lists.stride(3),
            count.stride(0), _head_stride(count, Hi), count.stride(2),
            *o.stride()[1:], o.stride(0), *e.stride()[1:], e.stride(0),
            H, Tq,
            BLK=BLK, TILE=tile, D=D, HAS_BLEN=block_len is not None, PREC=_prec(q.dtype), **even,
            SPLIT=split, **c,
        )
        if split > 1:
            total = torch.logsumexp(e, 0)  # (B, H, Tq); -inf where every share is empty
            w = torch.exp(e - torch.where(torch.isfinite(total), total, 0.0))  # (split, B, H, Tq), 0 for empty shares
            out.copy_((w[..., None] * o).sum(0))
            lse.copy_(total)

    tuner.launch(tuner.problem("fwd", q, k, index, *even.values()), FWD_CONFIGS, tile, launch)
    return out, lse, (lists, count, nfull)
