"""PBSA Triton kernels: forward (out + lse), backward dQ over row lists, dK/dV over slot lists.

One program per (query rows, batch x head) walks that query block's slot list with an online softmax
(exp2, scale folded in, fp32 accumulators). The backward recomputes probabilities from lse; dK/dV walk
the transposed lists (``_transposed``: ``blocks.build_transposed`` in two small kernels), busiest slot
first, so every gradient is written by one program: deterministic, no atomics. A query block is a tile
of max(16, BLK) rows (masked, so small blocks work too), taken whole or split over programs; keys and
backward query rows are walked in sub-tiles so K/V stages fit shared memory. With ragged blocks each
list entry carries its slot's valid rows (``_pack``): one scalar load per step, so the K/V prefetch is
one indirection deep. Exposed as ``torch.ops.worldkit.pbsa_fwd`` with autograd through
``worldkit::pbsa_bwd``; eager calls run the same forward and backward through a plain autograd Function
(``_Eager``), without the custom op's dispatch.
"""
from __future__ import annotations

import os
import statistics
from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable
from triton.runtime.errors import OutOfResources


LOG2E = 1.4426950408889634
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


@triton.jit
def _load_slot(K, V, k_off, v_off, col_ok, EVEN_K: tl.constexpr):
    """One slot's key and value sub-tile, (BLOCK_N, D) each; masked columns read as zeros."""
    if EVEN_K:
        kt = tl.load(K + k_off)
        vt = tl.load(V + v_off)
    else:
        kt = tl.load(K + k_off, mask=col_ok[:, None], other=0.0)
        vt = tl.load(V + v_off, mask=col_ok[:, None], other=0.0)
    return kt, vt


@triton.jit
def _load_rows(Q, DO, LSE, DELTA, q_off, do_off, row_off, row_ok, EVEN_Q: tl.constexpr):
    """A backward query tile: q and dO (rows, D), the lse in log2 units (0 on empty rows) and delta."""
    if EVEN_Q:
        q = tl.load(Q + q_off)
        do = tl.load(DO + do_off)
        lse2 = tl.load(LSE + row_off) * 1.4426950408889634
        delta = tl.load(DELTA + row_off)
    else:
        q = tl.load(Q + q_off, mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + do_off, mask=row_ok[:, None], other=0.0)
        lse2 = tl.load(LSE + row_off, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row_off, mask=row_ok, other=0.0)
    lse2 = tl.where(lse2 == float("-inf"), 0.0, lse2)  # empty rows have no valid column anyway
    return q, do, lse2, delta


@triton.jit
def _dq_steps(
    q, do, lse2, delta, dq, K, V, idx_row, s_ik, k_base, v_base, s_ks, s_vs, s_kt, s_kd, s_vt, s_vd, offs_n0, offs_d,
    start, stop, qk_scale,
    BLK: tl.constexpr, BLOCK_N: tl.constexpr, NSUB: tl.constexpr, PACKED: tl.constexpr, MASKED: tl.constexpr,
    PREC: tl.constexpr,
):
    """dQ over list entries [start, stop), unmasked or masked past each slot's length."""
    code_next = _list_entry(idx_row, s_ik, start, stop)
    for it in range(start * NSUB, stop * NSUB):
        s, offs_n, col_ok, code_next = _step(idx_row, s_ik, it, stop, code_next, offs_n0, BLK, BLOCK_N, NSUB, PACKED)
        kt, vt = _load_slot(  # (BLOCK_N, D) each; masked columns read as zeros
            K, V, k_base + s * s_ks + offs_n[:, None] * s_kt + offs_d[None, :] * s_kd,
            v_base + s * s_vs + offs_n[:, None] * s_vt + offs_d[None, :] * s_vd, col_ok, not MASKED)
        qk = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.exp2(qk - lse2[:, None])  # rows past the block read q = dO = 0, lse = delta = 0: ds = 0 there
        if MASKED:
            p = tl.where(col_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(vt), input_precision=PREC)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), kt, dq, input_precision=PREC)
    return dq


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, IDX, CNT, NFULL, DQ,
    qk_scale, sm_scale,
    s_qb, s_qh, s_qt, s_qd,
    s_kb, s_ks, s_kh, s_kt, s_kd,
    s_vb, s_vs, s_vh, s_vt, s_vd,
    s_ob, s_oh, s_ot, s_od,  # dO
    s_ib, s_ih, s_ir, s_ik,
    s_cb, s_ch, s_cr,
    s_gb, s_gh, s_gt, s_gd,  # dQ
    H, Tq,
    BLK: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    HAS_BLEN: tl.constexpr, PREC: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr,
):
    NSUB: tl.constexpr = TILE // BLOCK_N
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
    q, do, lse2, delta = _load_rows(  # (BLOCK_M, D), (BLOCK_M, D), (BLOCK_M,), (BLOCK_M,)
        Q, DO, LSE, DELTA, b * s_qb + h * s_qh + rows[:, None] * s_qt + offs_d[None, :] * s_qd,
        b * s_ob + h * s_oh + rows[:, None] * s_ot + offs_d[None, :] * s_od, bh.to(tl.int64) * Tq + rows,
        row_ok, EVEN_Q)
    n = tl.load(CNT + b * s_cb + h * s_ch + r * s_cr)
    dq = tl.zeros([BLOCK_M, D], tl.float32)
    idx_row = IDX + b * s_ib + h * s_ih + r * s_ir
    k_base = b * s_kb + h * s_kh
    v_base = b * s_vb + h * s_vh
    mid = _full_end(NFULL, b * s_cb + h * s_ch + r * s_cr, 0, n, HAS_BLEN, EVEN_K, TILE, BLK)  # full slots, unmasked
    if TILE == BLK:
        dq = _dq_steps(q, do, lse2, delta, dq, K, V, idx_row, s_ik, k_base, v_base, s_ks, s_vs, s_kt, s_kd, s_vt, s_vd,
                       offs_n0, offs_d, 0, mid, qk_scale, BLK, BLOCK_N, NSUB, HAS_BLEN, False, PREC)
    if not EVEN_K:
        dq = _dq_steps(q, do, lse2, delta, dq, K, V, idx_row, s_ik, k_base, v_base, s_ks, s_vs, s_kt, s_kd, s_vt, s_vd,
                       offs_n0, offs_d, mid, n, qk_scale, BLK, BLOCK_N, NSUB, HAS_BLEN, True, PREC)
    dq_ptr = DQ + b * s_gb + h * s_gh + rows[:, None] * s_gt + offs_d[None, :] * s_gd
    if EVEN_Q:
        tl.store(dq_ptr, (dq * sm_scale).to(DQ.dtype.element_ty))
    else:
        tl.store(dq_ptr, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, TIDX, TCNT, ORDER, BLEN, DK, DV,
    qk_scale, sm_scale,
    s_qb, s_qh, s_qt, s_qd,
    s_kb, s_ks, s_kh, s_kt, s_kd,
    s_vb, s_vs, s_vh, s_vt, s_vd,
    s_ob, s_oh, s_ot, s_od,  # dO
    s_ib, s_ih, s_is, s_ir,  # transposed lists
    s_cb, s_ch, s_cs,  # their counts, and the slot order (same layout)
    s_lb, s_ls,
    H, NS, Tq,
    BLK: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
    HAS_BLEN: tl.constexpr, PREC: tl.constexpr, EVEN_Q: tl.constexpr, EVEN_K: tl.constexpr,
):
    NSUB_K: tl.constexpr = TILE // BLOCK_N  # programs per slot, each owns BLOCK_N of its keys
    NSUB_Q: tl.constexpr = TILE // BLOCK_M  # query sub-tiles per reading query block
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    # programs launch busiest slot first (ORDER: slots by descending reader count), so the slots every
    # row reads (sink, persistent) start early instead of leaving a tail
    s = tl.load(ORDER + b * s_cb + h * s_ch + (tl.program_id(1) // NSUB_K) * s_cs).to(tl.int64)
    offs_n = (tl.program_id(1) % NSUB_K) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    if HAS_BLEN:
        kl = tl.minimum(tl.load(BLEN + b * s_lb + s * s_ls), BLK)
    else:
        kl = BLK
    col_ok = offs_n < kl
    key_bias = tl.where(col_ok, 0.0, float("-inf"))[:, None]  # (BLOCK_N, 1): keys past the slot's length get p = 0
    kt, vt = _load_slot(  # (BLOCK_N, D) each
        K, V, b * s_kb + s * s_ks + h * s_kh + offs_n[:, None] * s_kt + offs_d[None, :] * s_kd,
        b * s_vb + s * s_vs + h * s_vh + offs_n[:, None] * s_vt + offs_d[None, :] * s_vd, col_ok, EVEN_K)
    n = tl.load(TCNT + b * s_cb + h * s_ch + s * s_cs)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    tidx_row = TIDX + b * s_ib + h * s_ih + s * s_is
    r_next = _list_entry(tidx_row, s_ir, 0, n)
    for it in range(0, n * NSUB_Q):
        r = r_next
        r_next = _list_entry(tidx_row, s_ir, (it + 1) // NSUB_Q, n)
        offs_m = (it % NSUB_Q) * BLOCK_M + offs_m0
        rows = r * BLK + offs_m
        row_ok = (offs_m < BLK) & (rows < Tq)
        q, do, lse2, delta = _load_rows(
            Q, DO, LSE, DELTA, b * s_qb + h * s_qh + rows[:, None] * s_qt + offs_d[None, :] * s_qd,
            b * s_ob + h * s_oh + rows[:, None] * s_ot + offs_d[None, :] * s_od, bh.to(tl.int64) * Tq + rows,
            row_ok, EVEN_Q)
        qk_t = tl.dot(kt, tl.trans(q), input_precision=PREC)  # (BLOCK_N keys, BLOCK_M queries), unscaled
        if EVEN_K:
            qk_t = qk_t * qk_scale
        else:
            qk_t = qk_t * qk_scale + key_bias  # one multiply-add
        p_t = tl.exp2(qk_t - lse2[None, :])  # rows past the block read q = dO = 0, lse = delta = 0: no gradient
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PREC)
        dp_t = tl.dot(vt, tl.trans(do), input_precision=PREC)  # (BLOCK_N, BLOCK_M)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PREC)
    out_off = ((b * NS + s) * H + h) * (BLK * D) + offs_n[:, None] * D + offs_d[None, :]  # dk, dv contiguous
    out_ok = (offs_n < BLK)[:, None]
    tl.store(DK + out_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=out_ok)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=out_ok)


# Launch configurations per kernel. The default is the first one whose tiles fit the block's tile
# uncapped (so a block of 64 rows gets a configuration made for it, not a 128-row one cut down). On a
# CUDA device each kernel times its candidates once per problem class (``_tuned``) and keeps the
# fastest; under the interpreter, or with WORLDKIT_PBSA_TUNE=0, the default runs, and where it is out of
# shared memory (a smaller GPU, a big head dim, fp32) the next one that fits. Tile sizes are capped by
# the block's tile. BLOCK_M below the tile splits a query block over several programs (more programs per
# wave, fewer registers each); SPLIT > 1 splits each slot list into shares whose partial results are
# merged by log-sum-exp (more programs, and the last wave less empty, for a small extra pass). The order
# follows the tuner's timings on an H200 at the benchmark's shapes (benchmarks/RESULTS.md): the winners
# at blocks of 128 and 64 rows first. ``benchmarks/kernel_static.py`` compiles every candidate for a
# CUDA target on any machine and reports its registers, spills, shared memory and pipelining.
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
DQ_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=2),
    dict(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=32, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=2),
]
DKDV_CONFIGS = [  # BLOCK_N: keys per program; BLOCK_M: query rows per step
    dict(BLOCK_N=64, BLOCK_M=32, num_warps=4, num_stages=3),
    dict(BLOCK_N=64, BLOCK_M=32, num_warps=4, num_stages=4),
    dict(BLOCK_N=128, BLOCK_M=64, num_warps=8, num_stages=3),  # FlexAttention's sm_90 backward tile at head dim 128
    dict(BLOCK_N=128, BLOCK_M=64, num_warps=8, num_stages=2),
    dict(BLOCK_N=128, BLOCK_M=32, num_warps=8, num_stages=3),
    dict(BLOCK_N=128, BLOCK_M=64, num_warps=8, num_stages=1),
    dict(BLOCK_N=64, BLOCK_M=64, num_warps=8, num_stages=2),
]
_tuned: dict[tuple, dict] = {}
_fits: dict[tuple, dict] = {}  # untuned: the first candidate that fits the device, per problem class
_timings: dict[tuple, list[tuple[dict, float]]] = {}  # tuned: every candidate's ms, per problem class


def _tuning() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") != "1" and os.environ.get("WORLDKIT_PBSA_TUNE", "1") != "0"


def _time_ms(launch: Callable[[], None], flush: Tensor, reps: int = 10) -> float:
    """Median ms of single launches, each after ``flush`` (a buffer larger than the L2 cache) is zeroed,
    as ``triton.testing.do_bench`` times and as attention runs inside a model, between other layers:
    back-to-back launches on a warm cache rank configurations differently when the lists touch few blocks."""
    launch()  # compile and warm up
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        start.record()
        launch()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


_capped_memo: dict[tuple, tuple[list[dict], list[dict]]] = {}


def _capped(configs: list[dict], tile: int) -> list[dict]:
    """``configs`` for a tile: the default (the first whose tiles need no capping) first, every tile size
    capped to ``tile``, duplicates dropped. Remembered per list and tile (each launch asks), and made
    again when the list has changed since."""
    memo = _capped_memo.get((id(configs), tile))
    if memo is not None and memo[0] == configs:
        return memo[1]
    fits = [i for i, cfg in enumerate(configs) if all(v <= tile for k, v in cfg.items() if k.startswith("BLOCK_"))]
    ordered = [configs[fits[0]]] + configs[:fits[0]] + configs[fits[0] + 1:] if fits else configs
    capped = []
    for cfg in ordered:
        c = {k: (min(v, tile) if k.startswith("BLOCK_") else v) for k, v in cfg.items()}
        if c not in capped:
            capped.append(c)
    _capped_memo[(id(configs), tile)] = ([dict(c) for c in configs], capped)
    return capped


def _pow2(n: int) -> int:
    """``triton.next_power_of_2`` in plain Python (that one is a constexpr function, slower to call on
    the host): the smallest power of two >= n, 0 for 0."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def _launch(key: tuple, configs: list[dict], tile: int, launch: Callable[[dict], None],
            timer: Callable[[Callable[[], None]], float] = None) -> dict:
    """Run ``launch`` with the configuration chosen for ``key``: the default (the first of ``configs``
    whose tiles need no capping to ``tile``) or, out of shared memory, the next that fits the device; or
    when tuning the fastest of ``configs`` (capped by the tile, duplicates dropped), timed on the first
    call and kept.
    The launches must be idempotent: every candidate overwrites the whole output."""
    capped = _capped(configs, tile)
    if not _tuning() or len(capped) == 1:  # the first that fits this device (a big head dim or fp32 may not)
        start = capped.index(_fits[key]) if _fits.get(key) in capped else 0
        for i, c in enumerate(capped[start:], start):
            try:
                launch(c)
            except OutOfResources:
                if i == len(capped) - 1:
                    raise
                continue
            _fits[key] = c
            return c
    elif key in _tuned:
        best = _tuned[key]
    else:
        if timer is None:  # a flush buffer (256 MiB on the current device) lives while this class is tuned
            try:
                flush = torch.empty(64 * 2**20, dtype=torch.int32, device="cuda")
            except torch.OutOfMemoryError:  # no room: time on whatever the cache holds
                flush = torch.empty(0, dtype=torch.int32, device="cuda")
            timer = lambda fn: _time_ms(fn, flush)  # noqa: E731
        times = []
        for c in capped:
            try:
                times.append(timer(lambda c=c: launch(c)))
            except Exception:  # e.g. out of shared memory for this configuration
                times.append(float("inf"))
        best = capped[min(range(len(capped)), key=times.__getitem__)]
        _tuned[key] = best
        _timings[key] = list(zip(capped, times))
    launch(best)
    return best


def _tile(BLK: int) -> int:
    """Rows of one block padded to a power of two >= 16 (the minimum tl.dot size)."""
    return max(16, _pow2(BLK))


def _prec(dtype: torch.dtype) -> str:
    """fp32 inputs stay fp32 in tl.dot (no TF32), half inputs use the tensor-core default."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _check(q: Tensor, k: Tensor, D: int) -> None:
    if D not in (16, 32, 64, 128, 256):
        raise ValueError(f"Triton PBSA needs head dim in 16..256, a power of two; got {D}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype:
        raise ValueError(f"Triton PBSA needs fp16/bf16/fp32 q, k, v of one dtype; got {q.dtype}, {k.dtype}")


def _problem(q: Tensor, k: Tensor, index: Tensor) -> tuple:
    """The class of problems that share a tuned configuration: block, head dim, dtype, list layout,
    and the work per (batch x head) rounded to powers of two."""
    B, H, Tq, D = q.shape
    NS, BLK = k.shape[1], k.shape[3]
    return (BLK, D, q.dtype, index.shape[1] > 1, _pow2(-(-Tq // BLK)), _pow2(index.shape[3]), _pow2(NS), _pow2(B * H))


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


@triton.jit
def _delta_kernel(
    DO, OUT, DLSE, DELTA,
    s_db, s_dh, s_dt, s_ob, s_oh, s_ot, s_lb, s_lh, s_lt,
    H, Tq,
    D: tl.constexpr, BLOCK_T: tl.constexpr, HAS_DLSE: tl.constexpr,
):
    """delta = rowsum(dout * out) - dlse in fp32, (B, H, Tq) contiguous: what the backward kernels read."""
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = t < Tq
    d = tl.arange(0, D)
    do = tl.load(DO + b * s_db + h * s_dh + t[:, None] * s_dt + d[None, :], mask=ok[:, None], other=0.0)
    o = tl.load(OUT + b * s_ob + h * s_oh + t[:, None] * s_ot + d[None, :], mask=ok[:, None], other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + b * s_lb + h * s_lh + t * s_lt, mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * Tq + t, delta, mask=ok)


def _delta(do: Tensor, out: Tensor, dlse: Optional[Tensor]) -> Tensor:
    """rowsum(do * out) - dlse, fp32 (B, H, Tq), in one launch (the last dims of do and out contiguous)."""
    B, H, Tq, D = do.shape
    delta = torch.empty(B, H, Tq, dtype=torch.float32, device=do.device)
    if delta.numel() == 0:
        return delta
    do, out = (x if x.stride(-1) == 1 else x.contiguous() for x in (do, out))
    BLOCK_T = max(16, min(128, 8192 // D))
    _delta_kernel[(B * H, triton.cdiv(Tq, BLOCK_T))](
        do, out, dlse if dlse is not None else delta, delta,
        *do.stride()[:3], *out.stride()[:3], *(dlse.stride() if dlse is not None else (0, 0, 0)),
        H, Tq,
        D=D, BLOCK_T=BLOCK_T, HAS_DLSE=dlse is not None,
    )
    return delta


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


def _forward(
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, count: Tensor, block_len: Optional[Tensor], scale: float
) -> tuple[Tensor, Tensor]:
    """Triton PBSA forward: out (B, H, Tq, D) in q.dtype, lse (B, H, Tq) fp32."""
    out, lse, _ = _forward_lists(q, k, v, index, count, block_len, scale)
    return out, lse


def _forward_lists(
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, count: Tensor, block_len: Optional[Tensor], scale: float
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """``_forward``, also returning the lists it read (``_lists``: what the dQ kernel reads too; empty
    when nothing was launched)."""
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

    _launch(("fwd", *_problem(q, k, index), *even.values()), FWD_CONFIGS, tile, launch)
    return out, lse, (lists, count, nfull)


pbsa_fwd = torch.library.custom_op("worldkit::pbsa_fwd", _forward, mutates_args=())


@pbsa_fwd.register_fake
def _(q, k, v, index, count, block_len, scale):
    B, H, Tq, D = q.shape
    return torch.empty_like(q), q.new_empty(B, H, Tq, dtype=torch.float32)


def _backward_grads(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dlse: Optional[Tensor],
    index: Tensor, count: Tensor, block_len: Optional[Tensor], scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton PBSA backward: dq (B, H, Tq, D), dk and dv (B, NS, H, BLK, D), from dout and dlse (None:
    the log-sum-exp output was not used)."""
    return _backward_lists(do, q, k, v, out, lse, dlse, index, count, block_len, scale)


def _backward_lists(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dlse: Optional[Tensor],
    index: Tensor, count: Tensor, block_len: Optional[Tensor], scale: float, *lists_read: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """``_backward_grads``, given the lists the forward read (``_forward_lists``; made again if none)."""
    B, H, Tq, D = q.shape
    NS, BLK = k.shape[1], k.shape[3]
    Hi, NQB = index.shape[1], index.shape[2]
    do = do.contiguous()
    lse = lse.contiguous()  # (B, H, Tq)
    delta = _delta(do, out, dlse)  # (B, H, Tq) fp32; dlse enters as -delta
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, H, Tq, D)
    dk = torch.empty(B, NS, H, BLK, D, dtype=k.dtype, device=k.device)  # (B, NS, H, BLK, D)
    dv = torch.empty_like(dk)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    blen = block_len if block_len is not None else count
    s_blen = (blen.stride(0), blen.stride(1) if block_len is not None else 0)
    tile = _tile(BLK)
    even = dict(EVEN_Q=tile == BLK and Tq % BLK == 0, EVEN_K=tile == BLK and block_len is None)
    common = dict(BLK=BLK, D=D, HAS_BLEN=block_len is not None, PREC=_prec(q.dtype), **even)
    problem = (*_problem(q, k, index), *even.values())

    lists, count, nfull = lists_read or _lists(index, count, block_len, BLK)

    def launch_dq(c: dict) -> None:
        _bwd_dq_kernel[(NQB * (tile // c["BLOCK_M"]), B * H)](
            q, k, v, do, lse, delta, lists, count, nfull, dq,
            scale * LOG2E, scale,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            lists.stride(0), _head_stride(lists, Hi), lists.stride(2), lists.stride(3),
            count.stride(0), _head_stride(count, Hi), count.stride(2),
            *dq.stride(),
            H, Tq,
            TILE=tile, **common, **c,
        )

    _launch(("dq", *problem), DQ_CONFIGS, tile, launch_dq)
    tindex, tcount = _transposed(index, count, NS)  # (B, Hi, NS, NQB), (B, Hi, NS)
    order = tcount.argsort(dim=-1, descending=True, stable=True).to(torch.int32)  # (B, Hi, NS), busiest first

    def launch_dkdv(c: dict) -> None:
        _bwd_dkdv_kernel[(B * H, NS * (tile // c["BLOCK_N"]))](
            q, k, v, do, lse, delta, tindex, tcount, order, blen, dk, dv,
            scale * LOG2E, scale,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            tindex.stride(0), _head_stride(tindex, Hi), tindex.stride(2), tindex.stride(3),
            tcount.stride(0), _head_stride(tcount, Hi), tcount.stride(2),
            *s_blen,
            H, NS, Tq,
            TILE=tile, **common, **c,
        )

    _launch(("dkdv", *problem), DKDV_CONFIGS, tile, launch_dkdv)
    return dq, dk, dv


pbsa_bwd = torch.library.custom_op("worldkit::pbsa_bwd", _backward_grads, mutates_args=())


@pbsa_bwd.register_fake
def _(do, q, k, v, out, lse, dlse, index, count, block_len, scale):
    B, NS, H, BLK, D = k.shape
    return torch.empty_like(q), k.new_empty(B, NS, H, BLK, D), v.new_empty(B, NS, H, BLK, D)


def _setup_context(ctx, inputs, output, lists_read: tuple = ()):
    q, k, v, index, count, block_len, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, index, count, block_len, *lists_read)
    ctx.scale = scale
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not as zeros


def _backward_by(grads: Callable) -> Callable:
    """The backward of the forward's autograd, computing the gradients with ``grads``: the backward op,
    or ``_backward_lists`` given the lists the forward read (saved after the forward's inputs)."""

    def backward(ctx, dout, dlse):
        q, k, v, out, lse, index, count, block_len, *lists_read = ctx.saved_tensors
        if dout is None:  # only the log-sum-exp was used
            dout = torch.zeros_like(out)
        dq, dk, dv = grads(dout, q, k, v, out, lse, dlse, index, count, block_len, ctx.scale, *lists_read)
        return dq, dk, dv, None, None, None, None

    return backward


pbsa_fwd.register_autograd(_backward_by(pbsa_bwd), setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The custom op's forward and backward without its dispatch, for eager calls (their host cost
    bounds short steps); traced code (torch.compile, export, or any dispatch mode such as fake tensors
    and make_fx) goes through ``worldkit::pbsa_fwd``. Differentiable once, as the op is."""

    @staticmethod
    def forward(ctx, q, k, v, index, count, block_len, scale):
        out, lse, lists_read = _forward_lists(q, k, v, index, count, block_len, scale)
        _setup_context(ctx, (q, k, v, index, count, block_len, scale), (out, lse), lists_read)
        return out, lse

    backward = staticmethod(once_differentiable(_backward_by(_backward_lists)))  # lists packed once, by the forward


def pbsa_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    count: Tensor,
    block_len: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """PBSA through the Triton kernels (differentiable). Returns (out, lse)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"Triton PBSA needs a positive softmax scale; got {scale}")
    index = index.to(torch.int32)
    count = count.to(torch.int32)
    block_len = None if block_len is None else block_len.to(torch.int32)
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():  # traced, or fake/meta tensors
        return pbsa_fwd(q, k, v, index, count, block_len, scale)
    return _Eager.apply(q, k, v, index, count, block_len, scale)
