"""PBSA backward in Triton: dQ over each query block's slot list, dK/dV over each slot's readers.

The backward recomputes probabilities from lse. dQ walks the forward's lists; dK/dV walk the
transposed lists (``lists._transposed``), busiest slot first, so every gradient is written by one
program: deterministic, no atomics. Keys and backward query rows are walked in sub-tiles so K/V stages
fit shared memory. delta = rowsum(dout * out) - dlse comes from a kernel of its own (``_delta``).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import tuner
from .common import LOG2E, _prec, _tile
from .lists import _full_end, _head_stride, _list_entry, _lists, _step, _transposed

# The backward kernels' candidate launch configurations (``tuner``; see ``forward.FWD_CONFIGS``).
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


def _backward_lists(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dlse: Optional[Tensor],
    index: Tensor, count: Tensor, block_len: Optional[Tensor], scale: float, *lists_read: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton PBSA backward: dq (B, H, Tq, D), dk and dv (B, NS, H, BLK, D), from dout and dlse (None:
    the log-sum-exp output was not used), given the lists the forward read (``_forward_lists``; made
    again if none)."""
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

    tuner.launch(tuner.problem("dq", q, k, index, *even.values()), DQ_CONFIGS, tile, launch_dq)
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

    tuner.launch(tuner.problem("dkdv", q, k, index, *even.values()), DKDV_CONFIGS, tile, launch_dkdv)
    return dq, dk, dv
