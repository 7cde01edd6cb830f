"""PBSA kernel benchmark at Wan2.1-1.3B shapes: a correctness gate first, then timings against dense and sparse baselines.

    python benchmarks/kernel_bench.py [--quick | --headline] [--backward] [--write] [--out FILE] [--profile]
                                      [--frames 21 63] [--blocks 64 128] [--flex-autotune] [--tiny]

1. Device checks (exit non-zero on failure): the backward's helper kernels and the fused block selection
   against PyTorch; in the full presets also Triton PBSA's edge cases (bf16 and fp16, per-head and shared
   lists, ragged tails, empty rows, BLK 64 and 128) against the fp64 reference and the PyTorch path.
2. Timing (``triton.testing.do_bench``, median after warmup), bf16, one chunk of 3 frames x 1560 tokens,
   12 heads x 128, a key sequence of F frames whose last 3 are the chunk itself (the cached part rounded
   up to whole blocks, so every method reads the same tokens and the same blocks). Methods: SDPA flash and
   cuDNN on the full keys; PBSA (Triton, launch-tuned): the kernel alone, and (below full density) with
   the block selection that makes its lists (pool the chunk's queries and all keys, scores, top-K with the
   own block forced: the fused Triton kernel, or the PyTorch ops), forward only; FlexAttention compiled on a
   BlockMask of the identical blocks, with its defaults, and (--flex-autotune) with max-autotune, forward
   only, after everything else (its compile takes the longest; the section is written before it starts).
   Densities: every row reads a persistent segment (the oldest cached blocks, half the budget) plus random
   local blocks with its own block kept, per head. TFLOP/s count only computed blocks for the sparse methods
   (PBSA, Flex) and all keys for the dense ones; forward+backward counts 3.5x the forward (FA convention).
   Each problem first passes the gate, by FlashAttention's rule: for the output (and with --backward the
   gradients), the error against the fp64 reference is at most 2x the error of SDPA in the same dtype on
   the same problem (the lists as a token mask) plus 2^-10 of the reference's largest value, for PBSA in
   the tuned configuration that is then timed. A failure stops the timings (exit 1); a baseline (Flex)
   that fails it is not timed.
3. The launch tuner's choice per problem class and every candidate's time; with --profile, where the time
   goes kernel by kernel (torch.profiler) and the CPU time to issue a call against its full time.
--headline measures what the issue's targets need (21 frames, block 128, densities 1 and 0.25, forward;
--backward adds forward+backward); --tiny runs the same code on the CPU at toy sizes (Triton under its
interpreter), so a GPU session is not spent on a typo. Each baseline runs in try/except, so one failure
prints "n/a (reason)" and the table goes on.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
try:
    import worldkit_kernels  # noqa: F401  (installed: pip install -e .)
except ImportError:  # a bare checkout (no pip install -e .): load kernels/ under its package name
    spec = importlib.util.spec_from_file_location(
        "worldkit_kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["worldkit_kernels"] = module
    spec.loader.exec_module(module)

from worldkit_kernels.choices import kernel_choices, problem_label  # noqa: E402, F401  (problem_label: the report's words for a class)
from worldkit_kernels import (  # noqa: E402
    build_transposed,
    lists_are_top_k,
    pbsa_attention,
    pbsa_attention_with_lse,
    pbsa_torch,
    pool_blocks,
    reference,
)
from worldkit_kernels.blocks import topk_blocks_torch  # noqa: E402
from worldkit_kernels.pbsa_reference import token_mask  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe  # noqa: E402

TOKENS_PER_FRAME, CHUNK_FRAMES, HEADS, HEAD_DIM = 1560, 3, 12, 128
DEVICE, DTYPE = "cuda", torch.bfloat16  # timings
TOL = {torch.bfloat16: (3e-2, 6e-2), torch.float16: (5e-3, 1.5e-2)}  # edge cases: (out, grads) error / max |ref|
GATE_FACTOR = 2.0  # the gate: error against fp64 <= GATE_FACTOR x SDPA's (same dtype, same problem) ...
GATE_FLOOR = 2.0**-10  # ... + GATE_FLOOR x the reference's largest value (where SDPA's error is near 0)
LAUNCH_COST_CALLS, PROFILE_STEPS = 50, 5  # calls per pass in launch_cost, steps profiled


# ------------------------------------------------------------------------------------------------
# problem construction


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


# ------------------------------------------------------------------------------------------------
# correctness


def rel(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def correctness() -> bool:
    """Triton PBSA against the fp64 dense reference (and the PyTorch path), forward and backward."""
    print("== correctness: Triton PBSA vs fp64 dense reference and the PyTorch path")
    ok = True
    dev = DEVICE
    for dtype in TOL:
        for BLK, shared in ((64, False), (128, True)):
            B, H, D, NSc, Tq = 1, 4, HEAD_DIM, 24, 1000
            NQB = math.ceil(Tq / BLK)
            g = torch.Generator(device=dev).manual_seed(1)
            q = torch.randn(B, H, Tq, D, generator=g, device=dev).to(dtype)
            k = torch.randn(B, NSc + NQB, H, BLK, D, generator=g, device=dev).to(dtype)
            v = torch.randn(B, NSc + NQB, H, BLK, D, generator=g, device=dev).to(dtype)
            index, count, _ = make_lists(B, H, NSc, NQB, 0.3, dev, seed=2)
            if shared:
                index, count = index[:, :1], count[:, :1]
            count[0, 0, 1] = 0  # one empty row
            block_len = torch.randint(1, BLK + 1, (B, NSc + NQB), generator=g, device=dev, dtype=torch.int32)
            dout = torch.randn(B, H, Tq, D, generator=g, device=dev)
            results = {}
            for name, fn, cast in (
                ("triton", lambda *a: pbsa_attention_with_lse(*a, impl="triton"), dtype),
                ("torch", pbsa_torch, dtype),
                ("ref64", reference, torch.float64),
            ):
                qq, kk, vv = (t.detach().to(cast).requires_grad_() for t in (q, k, v))
                out, lse = fn(qq, kk, vv, index, count, block_len)
                (out.double() * dout).sum().backward()
                results[name] = (out, lse, qq.grad, kk.grad, vv.grad)
            ref = results["ref64"]
            t_out, t_grad = TOL[dtype]
            for impl in ("triton", "torch"):
                got = results[impl]
                errs = {n: rel(a, r) for n, a, r in zip(("out", "dq", "dk", "dv"), got[:1] + got[2:], ref[:1] + ref[2:])}
                fin = torch.isfinite(ref[1])
                lse_err = (got[1].double()[fin] - ref[1][fin]).abs().max().item()
                same_empty = torch.equal(torch.isinf(got[1]), torch.isinf(ref[1]))
                good = (
                    errs["out"] <= t_out and max(errs["dq"], errs["dk"], errs["dv"]) <= t_grad
                    and lse_err <= 1e-2 and same_empty and all(torch.isfinite(x).all() for x in got[:1] + got[2:])
                )
                ok &= good
                print(
                    f"  {str(dtype)[6:]:9s} BLK {BLK:3d} {'shared' if shared else 'per-head'} {impl:6s} "
                    + " ".join(f"{n} {e:.2e}" for n, e in errs.items())
                    + f" lse_abs {lse_err:.2e} {'ok' if good else 'FAIL'}"
                )
    return ok


def helpers_correct(NSc=24, NQB=37, candidates=(257, 1537)) -> tuple[bool, bool]:
    """The small kernels beside PBSA against their PyTorch references on the device: the backward's
    transposed lists and delta, the ragged-list packing (exactly, up to each row's count; delta to fp32
    rounding), and the fused block selection (its lists checked against fp64 scores, per head and
    shared, for each number of candidates). Returns (helpers ok, selection ok): a wrong selection only
    keeps ``auto`` on PyTorch, so it does not stop the timings."""
    from worldkit_kernels import lists_are_top_k
    from worldkit_kernels.pbsa_triton.backward import _delta
    from worldkit_kernels.pbsa_triton.lists import _pack, _pack_torch, _transposed
    from worldkit_kernels.topk_triton import topk_blocks_triton

    print("== correctness: the helper kernels and the fused block selection vs PyTorch")
    dev, B, H, D = DEVICE, 1, HEADS, HEAD_DIM
    g = torch.Generator(device=dev).manual_seed(3)
    NS = NSc + NQB
    index, count, _ = make_lists(B, H, NSc, NQB, 0.3, dev, seed=4)
    count[0, 0, 1] = 0  # an empty row
    checks = {}
    got, want = _transposed(index, count, NS), build_transposed(index, count, NS)
    checks["transposed lists"] = all(torch.equal(a, b) for a, b in zip(got, want))
    BLK = 128
    block_len = torch.randint(1, BLK + 1, (B, NS), generator=g, device=dev, dtype=torch.int32)
    (got, got_nf), (want, want_nf) = _pack(index, count, block_len, BLK), _pack_torch(index, count, block_len, BLK)
    valid = torch.arange(index.shape[-1], device=dev) < count[..., None]  # entries past a row's count are unset
    checks["packed lists"] = torch.equal(got_nf, want_nf) and torch.equal(got[valid], want[valid])
    do, out = (torch.randn(B, H, 300, D, generator=g, device=dev).to(DTYPE) for _ in range(2))
    dlse = torch.randn(B, H, 300, generator=g, device=dev)
    want = (do.float() * out.float()).sum(-1) - dlse
    checks["delta"] = rel(_delta(do, out, dlse), want) <= 1e-5 and rel(_delta(do, out, None), want + dlse) <= 1e-5
    selection = True
    for NC in candidates:
        pq = torch.randn(B, H, NQB, D, generator=g, device=dev).to(DTYPE)
        pk = torch.randn(B, H, NC, D, generator=g, device=dev).to(DTYPE)
        own = NC - NQB + torch.arange(NQB, device=dev)
        for shared in (False, True):
            K = max(1, round(0.25 * NC))
            try:
                idx, cnt = topk_blocks_triton(pq, pk, K, forced=own, shared_heads=shared)
                good = lists_are_top_k(pq, pk, K, idx, cnt, forced=own, shared_heads=shared)
            except Exception as e:
                print(f"  {short_error(e, 200)}")
                good = False
            checks[f"top-K, {NC} candidates, {'shared' if shared else 'per head'}"] = good
            selection &= good
    for name, good in checks.items():
        print(f"  {name}: {'ok' if good else 'FAIL'}")
    helpers = all(good for name, good in checks.items() if not name.startswith("top-K"))
    return helpers, selection


# ------------------------------------------------------------------------------------------------
# timing


def short_error(e: BaseException, limit: int = 80) -> str:
    """'Type: message' on one line, cut to ``limit`` characters of message."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


def bench(fn, grad_to_none=None):
    """Median ms of ``fn`` (triton.testing.do_bench, warmup first), or the reason it failed."""
    import triton.testing

    try:
        return triton.testing.do_bench(fn, warmup=50, rep=200, grad_to_none=grad_to_none, return_mode="median")
    except Exception as e:  # one failing baseline must not end the table
        return f"n/a ({short_error(e)})"


@contextlib.contextmanager
def untuned():
    """PBSA with its default launch configurations (the tuner off)."""
    old = os.environ.get("WORLDKIT_PBSA_TUNE")
    os.environ["WORLDKIT_PBSA_TUNE"] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["WORLDKIT_PBSA_TUNE"]
        else:
            os.environ["WORLDKIT_PBSA_TUNE"] = old


class GateFailed(Exception):
    """PBSA failed the correctness gate on a problem it was about to be timed on: the timings stop."""


def flat(x, Lk):
    """A pool-layout tensor (B, NS, H, BLK, D) as the flat key sequence (B, H, Lk, D)."""
    B, NS, H, BLK, D = x.shape
    return x.transpose(1, 2).reshape(B, H, NS * BLK, D)[:, :, :Lk]


def outputs(fn, inputs, dout, Lk):
    """``fn()``'s output and, given ``dout``, the gradients of its inputs (q, k, v; a pool's read back in
    the flat layout): {"out", "dq", "dk", "dv"}. The inputs' .grad are left None."""
    for t in inputs:
        t.grad = None
    with torch.set_grad_enabled(dout is not None):
        out = fn()
    got = {"out": out.detach()}
    if dout is not None:
        out.backward(dout)
        got.update(zip(("dq", "dk", "dv"), (flat(t.grad, Lk) if t.dim() == 5 else t.grad for t in inputs)))
        for t in inputs:
            t.grad = None
    return got


def reference64(p, index, count, dout):
    """The problem in fp64 through the dense reference, one head at a time (one head's scores at 21
    frames: 1.2 GB): ``outputs``' dict."""
    H = p["q"].shape[1]
    parts = []
    for h in range(H):
        hs = slice(0, 1) if index.shape[1] == 1 else slice(h, h + 1)
        q = p["q"].detach()[:, h : h + 1].double().requires_grad_(dout is not None)
        k, v = (p[n].detach()[:, :, h : h + 1].double().requires_grad_(dout is not None) for n in ("kp", "vp"))
        d = None if dout is None else dout[:, h : h + 1].double()
        parts.append(outputs(lambda: reference(q, k, v, index[:, hs], count[:, hs], p["block_len"])[0], [q, k, v], d, p["Lk"]))
    return {key: torch.cat([part[key] for part in parts], 1) for key in parts[0]}


def sdpa_same_dtype(p, index, count, dout):
    """SDPA in the benchmark's dtype on the same problem (torch's default backend): all keys at full
    density, else the lists as a token mask over the flat keys. ``outputs``' dict."""
    q, k, v = (p[n].detach().requires_grad_(dout is not None) for n in ("q", "k", "v"))
    NS, BLK = p["kp"].shape[1], p["kp"].shape[3]
    full = bool((count == NS).all())
    mask = None if full else token_mask(index, count, p["block_len"], p["Tq"], NS, BLK)[..., : p["Lk"]]
    return outputs(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), [q, k, v], dout, p["Lk"])


def gate(name, got, sdpa, ref):
    """FlashAttention's rule, for each of ``ref``'s tensors: max |got - ref| <= GATE_FACTOR x
    max |sdpa - ref| + GATE_FLOOR x max |ref|, and finite. (passed, one line of figures)."""
    ok, parts = True, []
    for key, r in ref.items():
        err = (got[key].double() - r).abs().max().item()
        base = (sdpa[key].double() - r).abs().max().item()
        bound = GATE_FACTOR * base + GATE_FLOOR * r.abs().max().item()
        good = err <= bound and bool(torch.isfinite(got[key]).all())  # a NaN error fails too
        ok &= good
        parts.append(f"{key} {err:.2e} (SDPA {base:.2e}, bound {bound:.2e}){'' if good else ' FAIL'}")
    return ok, f"{name}: " + ", ".join(parts)


def flex_options(BLK):
    """FlexAttention kernel_options to try, in order: its defaults suit blocks of 128; a smaller block
    needs tiles that divide it, forward and backward, with warps and stages to match."""
    if BLK >= 128:
        return [None]
    m = min(BLK, 64)
    small = dict(BLOCK_M=m, BLOCK_N=m, num_warps=4, num_stages=3)
    return [
        {**{f"fwd_{k}": v for k, v in small.items()},
         **{f"bwd_{k}": v for k, v in dict(BLOCK_M1=m // 2, BLOCK_N1=m, BLOCK_M2=m, BLOCK_N2=m // 2,
                                             num_warps=4, num_stages=3).items()}},
        small,
        {"fwd_BLOCK_M": m, "fwd_BLOCK_N": m},
        None,
    ]


def pick_flex_options(run, dout, BLK):
    """The first of ``flex_options(BLK)`` whose forward and (given ``dout``) backward both compile
    (``run(opts)`` returns Flex's output), else the first whose forward does: ``(opts,)``, or None when no
    forward compiles. Each failure is printed once, with its reason."""
    forward_only = None
    for opts in flex_options(BLK):
        try:
            with torch.no_grad():
                run(opts)
        except Exception as e:
            print(f"  Flex with kernel_options={opts}: the forward fails: {short_error(e, 400)}")
            continue
        forward_only = forward_only or (opts,)
        if dout is None:
            return forward_only
        try:
            run(opts).backward(dout)
            return (opts,)
        except Exception as e:
            print(f"  Flex with kernel_options={opts}: the backward fails: {short_error(e, 400)}")
    return forward_only


def timed(fn, inputs, dout):
    """(forward ms, forward+backward ms) of fn; either may be "n/a (reason)", the second "-" without
    ``dout`` (forward only)."""
    with torch.no_grad():
        t_fwd = bench(fn)
    if dout is None:
        return t_fwd, "-"

    def fwd_bwd():
        fn().backward(dout)

    return t_fwd, bench(fwd_bwd, grad_to_none=inputs)


class Stopped(BaseException):
    """SIGTERM (e.g. from ``timeout``): the rows so far are still written. A BaseException, so the
    ``except Exception`` around each baseline and in the launch tuner lets it through."""


@contextlib.contextmanager
def sigterm_stops():
    """SIGTERM raises ``Stopped`` inside the block (until the results are written)."""
    def stop(signum, frame):
        raise Stopped()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def timings_until_stopped(frames_list, blocks, densities, **kw):
    """``run_timings`` until done, ``Stopped`` or ``GateFailed``: (the rows measured, None or why it
    stopped)."""
    rows = []
    try:
        run_timings(frames_list, blocks, densities, rows, **kw)
        return rows, None
    except Stopped:
        print(f"stopped by SIGTERM after {len(rows)} rows: writing what was measured")
        return rows, "stopped by SIGTERM before every row was measured"
    except GateFailed as e:
        print(f"GATE FAILED, no more timings: {e}")
        return rows, f"the correctness gate FAILED, so the timings stopped: {e}"


def flex_compiled(mode=None):
    """FlexAttention compiled for the device (``mode``: torch.compile's), eager on the CPU (--tiny), or
    "n/a (reason)"."""
    try:
        from torch.nn.attention.flex_attention import flex_attention

        if DEVICE == "cpu":
            return flex_attention
        torch._dynamo.config.cache_size_limit = 64  # one compile per shape; never fall back to eager Flex
        return torch.compile(flex_attention, dynamic=False, mode=mode)
    except Exception as e:
        return f"n/a ({short_error(e)})"


METHODS = ("sdpa", "pbsa", "selection", "flex")  # what run_timings times unless told; also "flex max-autotune"


def run_timings(frames_list, blocks, densities, rows=None, backward=True, methods=METHODS):
    """Per problem (frames x block): the gate at every density first (PBSA tuned, as then timed; its
    failure raises ``GateFailed``), then the rows of ``methods``, appended to ``rows`` in place (a caller
    keeps the rows of a stopped run): SDPA flash and cuDNN; per density PBSA's kernel and PBSA with its
    block selection (fused and PyTorch; forward); then per density Flex (forward + backward) and Flex
    max-autotune (forward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = [] if rows is None else rows
    flexes = {name: flex_compiled(mode) for name, mode in (("flex", None), ("flex max-autotune", "max-autotune-no-cudagraphs"))
              if name in methods}
    flex_choice = {}  # block size -> (kernel_options,) Flex runs with, or None
    dev = DEVICE
    for frames in frames_list:
        for BLK in blocks:
            p = make_problem(frames, BLK, DTYPE, dev)
            q, k, v = (p[n].requires_grad_() for n in ("q", "k", "v"))
            kp, vp = p["kp"].requires_grad_(), p["vp"].requires_grad_()
            dout = torch.randn_like(q) if backward else None
            NS, Lk = p["NSc"] + p["NQB"], p["Lk"]
            problems = []
            for density in densities:  # the gate, before anything of this problem is timed
                index, count, K = make_lists(1, HEADS, p["NSc"], p["NQB"], density, dev)

                def pbsa(index=index, count=count):
                    return pbsa_attention(q, kp, vp, index, count, p["block_len"], impl="triton")

                ref, base = reference64(p, index, count, dout), sdpa_same_dtype(p, index, count, dout)
                ok, line = gate("PBSA", outputs(pbsa, [q, kp, vp], dout, Lk), base, ref)
                print(f"  gate F={frames} BLK={BLK} d={K / NS:.3f}: {line}")
                if not ok:
                    raise GateFailed(f"F={frames} BLK={BLK} d={K / NS:.3f}: {line}")
                problems.append((index, count, K, pbsa, ref, base))
            first, dense_pairs = len(rows), HEADS * p["Tq"] * Lk
            dense = (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION))
            for name, backend in dense if "sdpa" in methods else ():
                def fn(backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, k, v)
                rows.append((frames, Lk, BLK, 1.0, name, timed(fn, [q, k, v], dout), dense_pairs))
            for index, count, K, pbsa, ref, base in problems if "pbsa" in methods else ():
                pairs = computed_pairs(index, count, p["block_len"], p["Tq"], BLK)
                rows.append((frames, Lk, BLK, K / NS, "pbsa kernel", timed(pbsa, [q, kp, vp], dout), pairs))
                if "selection" in methods and K < NS:
                    for impl in ("Triton", "PyTorch"):
                        rows.append((frames, Lk, BLK, K / NS, f"pbsa + {impl} selection", with_selection(p, K, impl), pairs))
            for name, flex in flexes.items():  # last, the baselines that compile (max-autotune the longest)
                for index, count, K, pbsa, ref, base in problems:
                    d = None if name != "flex" else dout  # max-autotune: forward only
                    result = flex if isinstance(flex, str) else flex_row(flex, p, index, count, K, d, ref, base,
                                                                         flex_choice, name)
                    pairs = computed_pairs(index, count, p["block_len"], p["Tq"], BLK)
                    rows.append((frames, Lk, BLK, K / NS, name, result, pairs))
            print_rows(rows[first:])
            if dev == "cuda":
                torch.cuda.empty_cache()
    return rows


def with_selection(p, K, impl):
    """(ms, "-") of PBSA's forward with the selection that makes its lists: pool the chunk's queries and
    all keys, scores, top-K with the own block forced (the fused Triton kernel, its lists first checked
    against fp64 scores, or the PyTorch ops)."""
    from worldkit_kernels.topk_triton import topk_blocks_triton

    q, k, kp, vp, BLK = p["q"], p["k"], p["kp"], p["vp"], p["kp"].shape[3]
    own = p["NSc"] + torch.arange(p["NQB"], device=q.device)
    select = topk_blocks_triton if impl == "Triton" else topk_blocks_torch

    def fn():
        index, count = select(pool_blocks(q, BLK), pool_blocks(k, BLK), K, forced=own)
        return pbsa_attention(q, kp, vp, index, count, p["block_len"], impl="triton")

    with torch.no_grad():
        try:
            pq, pk = pool_blocks(q, BLK), pool_blocks(k, BLK)
            if not lists_are_top_k(pq, pk, K, *select(pq, pk, K, forced=own), forced=own):
                return "n/a (its lists fail the check against fp64 scores)"
        except Exception as e:
            return f"n/a ({short_error(e)})"
        return bench(fn), "-"


def flex_row(flex, p, index, count, K, dout, ref, base, flex_choice, name):
    """Flex on a BlockMask of the same blocks, each a full block (the compiled kernels never evaluate the
    mask_mod, which says the same for eager Flex, whose result comes from it alone): gated like PBSA
    (output; gradients with ``dout``), then timed; "n/a (reason)" when it fails to compile or the gate."""
    from torch.nn.attention.flex_attention import BlockMask

    q, k, v, BLK, Lk = p["q"], p["k"], p["v"], p["kp"].shape[3], p["Lk"]
    if dout is None:  # forward only: no graph (eager Flex on the CPU refuses inputs that require grad)
        q, k, v = q.detach(), k.detach(), v.detach()
    try:
        kv_index = torch.zeros(1, HEADS, p["NQB"], p["NSc"] + p["NQB"], dtype=torch.int32, device=q.device)
        kv_index[..., :K] = index
        listed = torch.zeros(kv_index.shape, dtype=torch.bool, device=q.device).scatter_(3, index.long(), True)

        def same_blocks(b, h, q_idx, kv_idx):  # what the blocks say, for whoever reads the mask (eager Flex)
            return listed[b, h, q_idx // BLK, kv_idx // BLK]

        mask = BlockMask.from_kv_blocks(torch.zeros_like(count), torch.zeros_like(kv_index), count, kv_index,
                                        BLOCK_SIZE=BLK, mask_mod=same_blocks, seq_lengths=(p["Tq"], Lk))
        if BLK not in flex_choice:  # per block size (the shapes recompile; the options do not change)
            choice = pick_flex_options(lambda opts: flex(q, k, v, block_mask=mask, kernel_options=opts), dout, BLK)
            if choice is None:  # not kept: the next problem tries again
                raise RuntimeError("no kernel_options tried compiles Flex's forward")
            flex_choice[BLK] = choice

        def fx(opts=flex_choice[BLK][0]):
            return flex(q, k, v, block_mask=mask, kernel_options=opts)

        keys = ref.keys() if dout is not None else ["out"]
        ok, line = gate(name, outputs(fx, [q, k, v], dout, Lk), base, {key: ref[key] for key in keys})
        print(f"  gate F={p['frames']} BLK={BLK} d={K / (p['NSc'] + p['NQB']):.3f}: {line}")
        return timed(fx, [q, k, v], dout) if ok else f"n/a (fails the gate: {line})"
    except Exception as e:
        return f"n/a ({short_error(e)})"


def selection_timings(frames_list, blocks, rows, density=0.25):
    """Block selection in PyTorch (pool the chunk's queries and all keys, pooled scores, row-wise top-K
    with the own block forced), the same with the fused Triton top-K, which of the two ``auto`` keeps,
    and the backward's transposed lists, against PBSA's forward at the same density. Markdown lines."""
    from worldkit_kernels.pbsa_triton.lists import _transposed
    from worldkit_kernels.topk_triton import auto_impl, topk_blocks_triton

    lines = ["| frames | block | candidates | K | pool + score + top-K ms | the same, top-K in Triton ms | "
             "auto keeps | transposed lists ms: PyTorch / Triton | PBSA fwd ms |", "|---|---|---|---|---|---|---|---|---|"]
    fwd = {(f, b): r[5][0] for r in rows for f, b in [(r[0], r[2])]
           if r[4] == "pbsa kernel" and abs(r[3] - density) < 0.02 and not isinstance(r[5], str)}
    for frames in frames_list:
        for BLK in blocks:
            p = make_problem(frames, BLK, DTYPE, DEVICE)
            NS = p["NSc"] + p["NQB"]
            K = max(1, round(density * NS))
            own = p["NSc"] + torch.arange(p["NQB"], device=DEVICE)

            def select():
                pq, pk = pool_blocks(p["q"], BLK), pool_blocks(p["k"], BLK)  # (1, H, NQB, D), (1, H, NS, D)
                return topk_blocks_torch(pq, pk, K, forced=own)

            def select_triton():
                pq, pk = pool_blocks(p["q"], BLK), pool_blocks(p["k"], BLK)
                return topk_blocks_triton(pq, pk, K, forced=own)

            index, count = select()
            t_sel = bench(select)
            try:  # the fused kernel must pick the same lists (ties aside) before it is timed
                same = (select_triton()[0] == index).all(-1).float().mean().item()
                t_fused = bench(select_triton) if same >= 0.99 else f"n/a (differs in {1 - same:.1%} of the rows)"
            except Exception as e:
                t_fused = f"n/a ({short_error(e)})"
            try:  # what local_window's impl: auto keeps for this problem (timed once per class)
                keeps = auto_impl(pool_blocks(p["q"], BLK), pool_blocks(p["k"], BLK), K, forced=own)
            except Exception as e:
                keeps = f"n/a ({short_error(e)})"
            t_tr = bench(lambda: build_transposed(index, count, NS))
            t_tr_triton = bench(lambda: _transposed(index, count, NS))  # what the backward runs
            f = fwd.get((frames, BLK), "-")
            t_sel, t_fused, t_tr, t_tr_triton, f = (
                x if isinstance(x, str) else f"{x:.3f}" for x in (t_sel, t_fused, t_tr, t_tr_triton, f))
            lines.append(f"| {frames} | {BLK} | {NS} | {K} | {t_sel} | {t_fused} | {keeps} | {t_tr} / {t_tr_triton} | {f} |")
    return "\n".join(lines)


def profile_table(step, steps=None):
    """Where ``step()`` spends its time, kernel by kernel (torch.profiler, after one warm-up step that also
    runs the tuner): a markdown table of each kernel's total time per step, slowest first."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps = steps or PROFILE_STEPS
    step()
    cuda = DEVICE == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if (e.device_time_total if cuda else e.self_cpu_time_total) > 0]
    key = (lambda e: e.device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    if cuda:  # kernels only: the CPU-side operators that launched them would count their time twice
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    events.sort(key=key, reverse=True)
    total = sum(key(e) for e in events)
    lines = [f"| kernel ({'GPU' if cuda else 'CPU self'} time) | ms per step | share |", "|---|---|---|"]
    for e in events[:15]:
        lines.append(f"| {e.key[:70].replace('|', '/')} | {key(e) / 1e3 / steps:.3f} | {key(e) / max(total, 1e-9):.0%} |")
    lines.append(f"| all | {total / 1e3 / steps:.3f} | 100% |")
    return "\n".join(lines)


def profile(frames=21, BLK=128, density=0.25, impl="triton", steps=None):
    """PBSA's forward + backward, kernel by kernel (``profile_table``)."""
    p = make_problem(frames, BLK, DTYPE, DEVICE)
    q, kp, vp = p["q"].requires_grad_(), p["kp"].requires_grad_(), p["vp"].requires_grad_()
    index, count, _ = make_lists(1, HEADS, p["NSc"], p["NQB"], density, DEVICE)
    dout = torch.randn_like(q)

    def step():
        for t in (q, kp, vp):
            t.grad = None
        pbsa_attention(q, kp, vp, index, count, p["block_len"], impl=impl).backward(dout)

    return profile_table(step, steps)


def profile_selection(frames=21, BLK=128, density=0.25, steps=None):
    """PBSA's forward with the fused block selection (the headline's row), kernel by kernel."""
    from worldkit_kernels.topk_triton import topk_blocks_triton

    p = make_problem(frames, BLK, DTYPE, DEVICE)
    NS = p["NSc"] + p["NQB"]
    K, own = min(NS, max(1, round(density * NS))), p["NSc"] + torch.arange(p["NQB"], device=DEVICE)

    @torch.no_grad()
    def step():
        index, count = topk_blocks_triton(pool_blocks(p["q"], BLK), pool_blocks(p["k"], BLK), K, forced=own)
        pbsa_attention(p["q"], p["kp"], p["vp"], index, count, p["block_len"], impl="triton")

    return profile_table(step, steps)


def launch_cost(frames=21, BLK=128, density=0.0625, impl="triton", n=None, backward=True):
    """CPU time to issue one PBSA call against its time with the GPU waited for, forward (no grad) and
    forward + backward: where the first is the larger, the step is bound by the CPU that launches the
    kernels, not by the kernels. A markdown table (ms per call, mean of ``n`` calls after a warm-up; 50
    calls do not fill the GPU's launch queue)."""
    p = make_problem(frames, BLK, DTYPE, DEVICE)
    q, kp, vp = p["q"].requires_grad_(), p["kp"].requires_grad_(), p["vp"].requires_grad_()
    index, count, _ = make_lists(1, HEADS, p["NSc"], p["NQB"], density, DEVICE)
    dout = torch.randn_like(q)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def forward():
        with torch.no_grad():
            pbsa_attention(q, kp, vp, index, count, p["block_len"], impl=impl)

    def forward_backward():
        for t in (q, kp, vp):
            t.grad = None
        pbsa_attention(q, kp, vp, index, count, p["block_len"], impl=impl).backward(dout)

    n = n or LAUNCH_COST_CALLS
    lines = [f"| {frames} frames, block {BLK}, {density:.2%} | CPU ms to issue | ms with the GPU waited for |", "|---|---|---|"]
    for name, fn in (("forward", forward), ("forward + backward", forward_backward))[: 2 if backward else 1]:
        fn()
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        issued = time.perf_counter()
        sync()
        done = time.perf_counter()
        lines.append(f"| {name} | {(issued - start) / n * 1e3:.3f} | {(done - start) / n * 1e3:.3f} |")
    return "\n".join(lines)


def fmt(result, pairs, bases, i):
    """'ms, TFLOP/s, speedups' for pass i (0 forward, 1 forward+backward); ``bases``: {label: the result
    of a method each speedup is taken against}."""
    ms = result if isinstance(result, str) else result[i]
    if isinstance(ms, str):
        return ms
    flops = 4 * HEAD_DIM * pairs * (1.0 if i == 0 else 3.5)
    speeds = [f"{b[i] / ms:.2f}x {label}" for label, b in bases.items()
              if not isinstance(b, str) and not isinstance(b[i], str)]
    return ", ".join([f"{ms:.3f} ms", f"{flops / ms / 1e9:.0f} TF/s"] + speeds)


def dense_bases(rows):
    """(frames, block) -> {"flash": its SDPA-flash result, "cuDNN": its cuDNN result}."""
    bases = {}
    for frames, _, blk, _, name, res, _ in rows:
        if name in ("sdpa-flash", "sdpa-cudnn"):
            bases.setdefault((frames, blk), {})["flash" if name == "sdpa-flash" else "cuDNN"] = res
    return bases


def table(rows):
    """Markdown table of all rows; speedups against SDPA flash and cuDNN of the same frames and block."""
    lines = [
        "| frames | KV tokens | block | density | method | fwd: ms, TFLOP/s, speedup vs SDPA | "
        "fwd+bwd: ms, TFLOP/s, speedup vs SDPA |",
        "|---|---|---|---|---|---|---|",
    ]
    bases = dense_bases(rows)
    for frames, lk, blk, dens, name, res, pairs in rows:
        b = bases.get((frames, blk), {})
        lines.append(f"| {frames} | {lk} | {blk} | {dens:.3f} | {name} | {fmt(res, pairs, b, 0)} | {fmt(res, pairs, b, 1)} |")
    return "\n".join(lines)


def print_rows(rows):
    bases = dense_bases(rows)
    for frames, lk, blk, dens, name, res, pairs in rows:
        b = bases.get((frames, blk), {})
        print(f"  F={frames:2d} KV={lk:6d} BLK={blk:3d} d={dens:.3f} {name:24s} fwd {fmt(res, pairs, b, 0):48s} "
              f"fwd+bwd {fmt(res, pairs, b, 1)}")


def targets(rows, frames=21, BLK=128) -> str:
    """The issue's forward targets at ``frames`` and ``BLK``, met or not, as markdown lines: at 25 %
    density PBSA with its selection >= 4.5x SDPA-flash and >= 2.7x cuDNN (the kernel alone beside it);
    at full density PBSA within 1.1x of cuDNN's time."""
    def fwd(name, density):
        for f, _, blk, d, n, res, _ in rows:
            if (f, blk, n) == (frames, BLK, name) and abs(d - density) < 0.02:
                return None if isinstance(res, str) or isinstance(res[0], str) else res[0]
        return None

    def against(t, base, label, goal=None):
        if base is None:
            return f"{label} not measured"
        verdict = "" if goal is None else f" (target >= {goal}x: {'met' if base / t >= goal else 'MISSED'})"
        return f"{base / t:.2f}x {label} ({base:.3f} ms){verdict}"

    flash, cudnn = fwd("sdpa-flash", 1.0), fwd("sdpa-cudnn", 1.0)
    lines = []
    for name in ("pbsa + Triton selection", "pbsa + PyTorch selection", "pbsa kernel"):
        t = fwd(name, 0.25)
        goals = (None, None) if name == "pbsa kernel" else (4.5, 2.7)
        lines.append(f"- 25 %, {name}: " + ("not measured" if t is None else f"{t:.3f} ms, " + ", ".join(
            (against(t, flash, "SDPA-flash", goals[0]), against(t, cudnn, "cuDNN", goals[1])))))
    t = fwd("pbsa kernel", 1.0)
    if t is not None and cudnn is not None:
        lines.append(f"- full density, pbsa kernel: {t:.3f} ms, {t / cudnn:.2f}x cuDNN's time ({cudnn:.3f} ms; "
                     f"target <= 1.1x: {'met' if t / cudnn <= 1.1 else 'MISSED'})")
    else:
        lines.append("- full density, pbsa kernel against cuDNN: not measured")
    return "\n".join(lines)


def tiny() -> None:
    """The same code on the CPU at toy sizes: Triton under its interpreter, a wall-clock timer, eager Flex."""
    global TOKENS_PER_FRAME, HEADS, HEAD_DIM, DTYPE, DEVICE, LAUNCH_COST_CALLS, PROFILE_STEPS, bench
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules are imported
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    TOKENS_PER_FRAME, HEADS, HEAD_DIM, DTYPE, DEVICE = 20, 2, 16, torch.float32, "cpu"
    LAUNCH_COST_CALLS, PROFILE_STEPS = 2, 1

    def wall_ms(fn, grad_to_none=None, n=1):
        try:
            fn()
            start = time.perf_counter()
            for _ in range(n):
                for t in grad_to_none or ():
                    t.grad = None
                fn()
            return (time.perf_counter() - start) / n * 1e3
        except Exception as e:
            return f"n/a ({short_error(e)})"

    bench = wall_ms


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="21 and 63 frames, block 128, densities 1 / 0.25 / 0.0625")
    ap.add_argument("--headline", action="store_true",
                    help="what the issue's targets need: 21 frames, block 128, densities 1 and 0.25, forward "
                         "(--backward adds forward+backward), Flex max-autotune; no edge-case check")
    ap.add_argument("--backward", action="store_true", help="with --headline: also forward+backward")
    ap.add_argument("--flex-autotune", action="store_true", help="also Flex compiled with max-autotune (forward)")
    ap.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    ap.add_argument("--out", type=Path, help="write the markdown section to this file")
    ap.add_argument("--frames", type=int, nargs="+", help="key-sequence lengths in frames (overrides the preset)")
    ap.add_argument("--blocks", type=int, nargs="+", help="block sizes (overrides the preset)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile PBSA kernel by kernel (forward with the fused selection; forward + "
                         "backward unless --headline without --backward) and the CPU cost of issuing a call")
    ap.add_argument("--tiny", action="store_true", help="on the CPU at toy sizes (a dry run of the code paths)")
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    args.cmd = " ".join(["python benchmarks/kernel_bench.py"] + list(sys.argv[1:] if argv is None else argv))
    start = time.perf_counter()
    if args.tiny:
        tiny()
    elif not torch.cuda.is_available():
        print("kernel_bench needs a CUDA GPU (--tiny runs its code on the CPU at toy sizes)")
        return 2
    machine = describe(DEVICE)
    print(machine)
    with untuned():  # every kernel path once, in its default configuration (tests cover the others)
        passed = True if args.headline or args.tiny else correctness()
        helpers, selection = helpers_correct(**(dict(NSc=5, NQB=3, candidates=(20,)) if args.tiny else {}))
    if not (passed and helpers):
        print("correctness check FAILED: no timings")
        return 1
    if not selection:
        print("the fused block selection FAILED its check: local_window's impl: auto keeps PyTorch")
    print(f"  ({time.perf_counter() - start:.0f} s)")
    if args.headline:
        frames, blocks, densities = (21,), (128,), (1.0, 0.25)
        args.flex_autotune = True
    else:
        frames = (21, 63) if args.quick else (6, 12, 21, 63)
        blocks = (128,) if args.quick else (64, 128)
        densities = (1.0, 0.25, 0.0625) if args.quick else (1.0, 0.5, 0.25, 0.125, 0.0625)
        args.backward = True
    frames, blocks = args.frames or (((6,) if args.tiny else frames)), args.blocks or ((16,) if args.tiny else blocks)
    print(f"== timings ({str(DTYPE).removeprefix('torch.')}, median ms), each problem gated first")
    with sigterm_stops():
        return report(args, frames, blocks, densities, machine, start)


def report(args, frames, blocks, densities, machine, start) -> int:
    """Timings, targets, block-selection timings, the tuner's choices and the profile, then (--flex-autotune)
    Flex max-autotune, whose compile takes the longest, last: printed, and with --out / --write written as
    a markdown section (with --out also before max-autotune starts; marked partial when stopped; exit 1
    when the gate failed)."""
    rows, stopped = timings_until_stopped(frames, blocks, densities, backward=args.backward)
    notes = []  # the sections after the table, in order
    if not stopped:
        print("== block selection at 25 % density")
        try:
            notes.append("Block selection at 25 % density (PyTorch; and with the fused Triton top-K kernel), beside "
                         "PBSA's forward (median ms), and which one `local_window`'s `impl: auto` keeps:\n\n"
                         + selection_timings(frames, blocks, rows))
        except Stopped:
            stopped = "stopped by SIGTERM before every row was measured"
        except Exception as e:  # the timings above are worth more than the selection's
            notes.append(f"(Block selection timings failed: {short_error(e, 200)})")
    if getattr(args, "profile", False) and not stopped:
        f0, b0 = frames[0], blocks[0]
        print(f"== profile: {f0} frames, block {b0}, 25 % density")
        try:
            notes.append(f"PBSA forward with the fused block selection, kernel by kernel (torch.profiler, {f0} frames, "
                         f"block {b0}, 25 % density):\n\n" + profile_selection(f0, b0))
            if args.backward:
                notes.append(f"PBSA forward + backward kernel by kernel ({f0} frames, block {b0}, 25 % density):"
                             "\n\n" + profile(f0, b0))
            notes.append("The CPU cost of issuing PBSA calls:\n\n" + launch_cost(f0, b0, backward=args.backward)
                         + "\n\n" + launch_cost(f0, b0, density=0.25, backward=args.backward))
        except Stopped:
            notes.append("(The profile was stopped before it finished.)")
        except Exception as e:  # the timings above are worth more than the profile
            notes.append(f"(The profile failed: {short_error(e, 200)})")
    section = write_section(args, rows, stopped, notes, frames, blocks, machine)
    if args.flex_autotune and not stopped:
        print("== Flex compiled with max-autotune (forward), last: its compile takes the longest")
        more, stopped = timings_until_stopped(frames, blocks, densities, backward=False, methods=("flex max-autotune",))
        rows += more
        section = write_section(args, rows, stopped, notes, frames, blocks, machine)
    print(section)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.write:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(section)
        print("appended to benchmarks/RESULTS.md")
    return 1 if stopped and "gate" in stopped else 0


def write_section(args, rows, stopped, notes, frames, blocks, machine) -> str:
    """The markdown section: what ran where, the table, the targets, ``notes``, the kernels' choices;
    written to --out when given."""
    chosen = kernel_choices()  # what the kernels loaded in this process kept
    ms = lambda t: "inf" if t is None else f"{t:.3f}"  # noqa: E731  (None: the candidate failed)
    tuned = [e for e in chosen["pbsa"] if e["tuned"]]
    parts = [table(rows), f"Against the issue's targets ({frames[0]} frames, block {blocks[0]}, forward; speedups "
             "against SDPA of the same run):\n\n" + targets(rows, frames[0], blocks[0])]
    if stopped:
        parts.append(f"(Partial: {stopped}.)")
    parts += notes
    parts.append("Launch configurations the tuner kept (per problem class):\n\n" + (
        "\n".join(dict.fromkeys(f"- {e['class']}: {e['kept']}" for e in tuned)) or "- none (tuning off)"))
    times = "\n".join(f"- {e['class']}: " + "; ".join(
        f"{c} {ms(t)}" for c, t in sorted(e["timings_ms"].items(), key=lambda r: float("inf") if r[1] is None else r[1]))
        for e in tuned if "timings_ms" in e)
    if times:
        parts.append("Every candidate the tuner timed, fastest first (median ms of 10 launches, each after an L2 "
                     "flush):\n\n" + times)
    picks = "\n".join(
        f"- {e['class']}: " + ", ".join(f"{impl} {ms(t)}" for impl, t in e["timings_ms"].items()) + f"; keeps {e['kept']}"
        + (f" ({e['kernel_failed']})" if "kernel_failed" in e else "") for e in chosen["selection"])
    if picks:
        parts.append("Block selection with `impl: auto`, per problem class: ms per call of 20 calls back to back "
                     "(not the table's method: one call after an L2 flush), and the one kept:\n\n" + picks)
    cmd = getattr(args, "cmd", "python benchmarks/kernel_bench.py")
    gated = ("The correctness gate FAILED (below): the timings stopped there. " if stopped and "gate" in stopped
             else "Every PBSA problem passed the gate before it was timed ")
    section = (
        f"\n## PBSA kernel, {datetime.date.today()}\n\n{machine}; {str(DTYPE).removeprefix('torch.')}; `{cmd}`; chunk of "
        f"{CHUNK_FRAMES} x {TOKENS_PER_FRAME} tokens, {HEADS} heads x {HEAD_DIM}; key sequence of F frames including the "
        f"chunk. {gated}(gate: error against fp64 <= 2x SDPA's in the same dtype + 2^-10 of the largest reference "
        f"value; output{' and gradients' if args.backward else ''}). TFLOP/s: computed blocks only for PBSA and Flex, "
        "all keys for SDPA; forward+backward counted as 3.5x the forward. Speedups against SDPA flash and cuDNN on "
        "the full keys, same pass, same process. `pbsa + ... selection`: the forward including the block selection "
        "that makes its lists (all keys pooled).\n\n" + "\n\n".join(parts) + "\n"
    )
    if args.out:
        args.out.write_text(section)
    return section


if __name__ == "__main__":
    sys.exit(main())
