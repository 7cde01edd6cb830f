"""Block selection in one Triton kernel: pooled scores, softmax, optional sum over heads, the forced own
block and the row-wise top-K, written as sorted index lists (the fused form of
``blocks.topk_blocks_torch``; both run behind ``topk.topk_blocks``).

One program per (batch x list head, query block). It computes the row's logits against every candidate
(chunks of the head dim, fp32), their softmax, and sorts (score, candidate) pairs packed into int64 keys:
a softmax score is >= 0, so its float32 bits order as integers; the low 32 bits hold the candidate
reversed, so among equal scores the lower candidate wins. The first K keys are the kept candidates; a
second sort puts them in ascending order. A row's candidates are held in registers (more warps for
longer rows): up to ``MAX_CANDIDATES``, where compiled for sm_90 the kernel still spills nothing.

``auto_impl`` picks between it and the PyTorch ops per problem class (what ``topk_blocks(...,
impl="auto")`` runs on CUDA): on the first call of the class it checks the kernel's lists and times both
on the device, as the PBSA kernels pick their launch configurations; ``choices()`` says what it kept.
"""
from __future__ import annotations

import math
import os
import statistics
from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .blocks import kept_per_row, lists_are_top_k, topk_blocks_torch
from .pbsa_triton import tuner

MAX_CANDIDATES = 2048


@triton.jit
def _topk_kernel(
    PQ, PK, FORCED, OUT,
    s_qb, s_qh, s_qr, s_qd,
    s_kb, s_kh, s_kc, s_kd,
    s_ob, s_oh, s_or, s_ok,
    H, NQB, NC, K, Hs, scale,
    D: tl.constexpr, DC: tl.constexpr, NCP: tl.constexpr, HAS_FORCED: tl.constexpr,
):
    bh = tl.program_id(0)  # batch x list head
    r = tl.program_id(1)  # query block
    b = bh // Hs
    hs = bh % Hs
    cand = tl.arange(0, NCP)
    valid = cand < NC
    total = tl.zeros([NCP], dtype=tl.float32)
    n_heads = H // Hs  # heads summed into this list: all of them (shared) or its own one
    for i in range(0, n_heads):
        h = hs + i
        logits = tl.zeros([NCP], dtype=tl.float32)
        for d0 in range(0, D, DC):
            dd = d0 + tl.arange(0, DC)
            q = tl.load(PQ + b * s_qb + h * s_qh + r * s_qr + dd * s_qd).to(tl.float32)  # (DC,)
            k = tl.load(PK + b * s_kb + h * s_kh + cand[:, None] * s_kc + dd[None, :] * s_kd,
                        mask=valid[:, None], other=0.0).to(tl.float32)  # (NCP, DC)
            logits += tl.sum(k * q[None, :], 1)
        logits = tl.where(valid, logits * scale, float("-inf"))
        p = tl.exp(logits - tl.max(logits, 0))
        total += p / tl.sum(p, 0)
    if HAS_FORCED:
        own = tl.load(FORCED + r)
        total = tl.where(cand == own, float("inf"), total)
    bits = tl.where(valid, total.to(tl.int32, bitcast=True), -1)  # scores >= 0: their bits order as ints
    key = (bits.to(tl.int64) << 32) | (NCP - 1 - cand).to(tl.int64)
    key = tl.sort(key, 0, descending=True)
    pos = tl.arange(0, NCP)
    chosen = NCP - 1 - key.to(tl.int32)  # the low 32 bits: the candidate
    chosen = tl.sort(tl.where(pos < K, chosen, NCP), 0)  # the kept candidates, ascending
    tl.store(OUT + b * s_ob + hs * s_oh + r * s_or + pos * s_ok, chosen.to(tl.int64), mask=pos < K)


def topk_blocks_triton(
    pooled_q: Tensor,
    pooled_k: Tensor,
    k: int,
    forced: Optional[Tensor] = None,
    shared_heads: bool = False,
) -> tuple[Tensor, Tensor]:
    """``blocks.topk_blocks_torch`` in one kernel launch, with the same arguments and results up to rounding
    and ties: index (B, Hs, NQB, K) long, rows ascending, and count (B, Hs, NQB) long, all K. The scores
    are exact fp32 sums (the PyTorch path's matmul may run in TF32) with a hardware exp, so blocks whose
    scores differ by rounding may be picked differently; equal scores go to the lower candidate
    (``torch.topk`` leaves ties unspecified)."""
    B, H, NQB, D = pooled_q.shape
    NC = pooled_k.shape[2]
    if pooled_k.dim() != 4 or pooled_k.shape[:2] != (B, H) or pooled_k.shape[3] != D:
        raise ValueError(f"pooled_k must be (B, H, NC, D) with B={B}, H={H}, D={D}; got {tuple(pooled_k.shape)}")
    if forced is not None and tuple(forced.shape) != (NQB,):
        raise ValueError(f"forced must be ({NQB},), one candidate per query block; got {tuple(forced.shape)}")
    if D & (D - 1) or D < 16:
        raise ValueError(f"Triton block selection needs a head dim that is a power of two >= 16; got {D}")
    if NC > MAX_CANDIDATES:
        raise ValueError(f"Triton block selection holds at most {MAX_CANDIDATES} candidates per row; got {NC}")
    if pooled_k.device != pooled_q.device or (forced is not None and forced.device != pooled_q.device):
        raise ValueError(f"pooled_q, pooled_k and forced must be on one device; got {pooled_q.device}, "
                         f"{pooled_k.device}, {None if forced is None else forced.device}")
    if not pooled_q.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("Triton block selection needs CUDA tensors (or TRITON_INTERPRET=1 to run on the CPU)")
    k = kept_per_row(k, NC, forced is not None)
    Hs = 1 if shared_heads else H
    index = torch.empty(B, Hs, NQB, k, dtype=torch.long, device=pooled_q.device)
    count = torch.full((B, Hs, NQB), k, dtype=torch.long, device=pooled_q.device)
    if index.numel() == 0:
        return index, count
    forced_ = forced.to(device=pooled_q.device, dtype=torch.int32).contiguous() if forced is not None else index
    NCP = max(16, triton.next_power_of_2(NC))
    _topk_kernel[(B * Hs, NQB)](
        pooled_q, pooled_k, forced_, index,
        *pooled_q.stride(), *pooled_k.stride(), *index.stride(),
        H, NQB, NC, k, Hs, 1.0 / math.sqrt(D),
        D=D, DC=min(D, 16), NCP=NCP, HAS_FORCED=forced is not None,
        num_warps=max(4, min(8, NCP // 256)),  # 2048 candidates: 8 warps, no spills on sm_90
    )
    return index, count


# Per problem class: the implementation ``auto_impl`` kept, both timings (ms per call), and why the
# kernel was not timed where it was not.
_choice: dict[tuple, str] = {}
_choice_timings: dict[tuple, dict[str, float]] = {}
_choice_failures: dict[tuple, str] = {}
MARGIN = 0.9  # the kernel is kept when it takes under this fraction of the PyTorch ops' time


def fused_fits(pooled_q: Tensor, pooled_k: Tensor) -> bool:
    """Whether the fused kernel takes this problem: a head dim that is a power of two >= 16 and at most
    ``MAX_CANDIDATES`` candidates."""
    D, NC = pooled_q.shape[-1], pooled_k.shape[2]
    return D >= 16 and not D & (D - 1) and NC <= MAX_CANDIDATES


def _per_call_ms(fn: Callable[[], object], device: torch.device, calls: int = 20, repeats: int = 3) -> float:
    """CUDA ms per call of ``calls`` calls issued back to back on ``device`` (the median of ``repeats``,
    after one warm-up call): the larger of the device time and the host's cost of issuing the call. Two
    paths of a few microseconds of device work each, one of about twenty small ops and one of a single
    launch, differ mostly in the second; ``kernel_bench.py`` also times them apart."""
    with torch.cuda.device(device):
        fn()  # compile and warm up
        torch.cuda.synchronize()
        runs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) / calls)
    return statistics.median(runs)


def auto_impl(
    pooled_q: Tensor,
    pooled_k: Tensor,
    k: int,
    forced: Optional[Tensor] = None,
    shared_heads: bool = False,
    timer: Optional[Callable[[Callable[[], object]], float]] = None,
) -> str:
    """``"triton"`` or ``"torch"`` for this problem's class (device, dtypes, batch, heads, shared lists,
    query blocks, candidates rounded up to a power of two, head dim, forced block). On the first call of
    a class on CUDA, the fused kernel's lists are checked (``lists_are_top_k``), then both are timed
    (``_per_call_ms``, or ``timer``) and the kernel kept when it takes under ``MARGIN`` of the PyTorch
    ops' time; the choice is remembered for the process. PyTorch, not remembered, where the kernel does
    not fit, off CUDA (unless a ``timer`` is given), with tuning off (``WORLDKIT_PBSA_TUNE=0``) or while
    a CUDA graph is captured; PyTorch, remembered, when the kernel fails or its lists fail the check.
    The two pick the same blocks up to rounding and ties (see ``topk_blocks_triton``), so a choice that
    differs between runs or ranks can change a near-tie: pin ``torch`` or ``triton`` to rule it out."""
    if not fused_fits(pooled_q, pooled_k) or (timer is None and not pooled_q.is_cuda):
        return "torch"
    B, H, NQB, D = pooled_q.shape
    NC = pooled_k.shape[2]
    key = (str(pooled_q.device), pooled_q.dtype, B, H, shared_heads, NQB, 1 << max(4, (NC - 1).bit_length()), D,
           forced is not None, pooled_k.dtype)
    choice = _choice.get(key)
    if choice is not None:
        return choice
    if timer is None:
        if not tuner.tuning() or torch.cuda.is_current_stream_capturing():
            return "torch"
        timer = lambda fn: _per_call_ms(fn, pooled_q.device)  # noqa: E731

    def run(select):
        return lambda: select(pooled_q, pooled_k, k, forced=forced, shared_heads=shared_heads)

    times = {"torch": timer(run(topk_blocks_torch)), "triton": float("inf")}  # the reference path's failure is raised
    try:
        index, count = run(topk_blocks_triton)()
        if lists_are_top_k(pooled_q, pooled_k, k, index, count, forced=forced, shared_heads=shared_heads):
            times["triton"] = timer(run(topk_blocks_triton))
        else:
            _choice_failures[key] = "its lists failed the check against fp64 scores"
    except Exception as e:  # the kernel does not build or launch here: PyTorch selects
        _choice_failures[key] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    _choice_timings[key] = times
    _choice[key] = "triton" if times["triton"] < MARGIN * times["torch"] else "torch"
    return _choice[key]


def choices() -> list[dict]:
    """What ``auto_impl`` kept in this process, one entry per problem class (ordered by its key's
    text): {"key", "kept", "timings": {"torch": ms, "triton": ms}} (inf where the kernel was not timed)
    and "failure" where the kernel failed or its lists failed the check."""
    out = []
    for key, times in sorted(_choice_timings.items(), key=str):
        entry = {"key": key, "kept": _choice.get(key), "timings": dict(times)}
        if key in _choice_failures:
            entry["failure"] = _choice_failures[key]
        out.append(entry)
    return out
