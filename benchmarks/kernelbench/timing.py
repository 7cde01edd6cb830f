"""The timing rows (``run_timings``; ``triton.testing.do_bench``, median after warmup): one chunk of 3
frames x 1560 tokens, 12 heads x 128, against a key sequence of F frames whose last 3 are the chunk itself
(the cached part rounded up to whole blocks, so every method reads the same tokens and the same blocks).
Methods: SDPA flash and cuDNN on the full keys; PBSA (Triton, launch-tuned): the kernel alone, and (below
full density) with the block selection that makes its lists (pool the chunk's queries and all keys,
scores, top-K with the own block forced: the fused Triton kernel, or the PyTorch ops), forward only;
FlexAttention compiled on a BlockMask of the identical blocks (``flex``), last. Densities: every row reads
a persistent segment (the oldest cached blocks, half the budget) plus random local blocks with its own
block kept, per head (``problem.make_lists``). Each problem first passes the gate (``checks.gate``), for
PBSA in the tuned configuration that is then timed; a failure raises ``GateFailed``.

Also the block selection's own table (``selection_timings``); a SIGTERM that stops the timings keeps the
rows so far (``Stopped``, ``sigterm_stops``, ``timings_until_stopped``)."""
from __future__ import annotations

import contextlib
import signal

import torch
import torch.nn.functional as F

from worldkit_kernels import build_transposed, lists_are_top_k, pbsa_attention, pool_blocks
from worldkit_kernels.blocks import topk_blocks_torch

from . import measure, problem
from .checks import GateFailed, gate, outputs, reference64, sdpa_same_dtype
from .flex import flex_compiled, flex_row
from .measure import short_error
from .problem import computed_pairs, make_lists, make_problem
from .tables import print_rows


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
    dev = problem.DEVICE
    for frames in frames_list:
        for BLK in blocks:
            p = make_problem(frames, BLK, problem.DTYPE, dev)
            q, k, v = (p[n].requires_grad_() for n in ("q", "k", "v"))
            kp, vp = p["kp"].requires_grad_(), p["vp"].requires_grad_()
            dout = torch.randn_like(q) if backward else None
            NS, Lk = p["NSc"] + p["NQB"], p["Lk"]
            problems = []
            for density in densities:  # the gate, before anything of this problem is timed
                index, count, K = make_lists(1, problem.HEADS, p["NSc"], p["NQB"], density, dev)

                def pbsa(index=index, count=count):
                    return pbsa_attention(q, kp, vp, index, count, p["block_len"], impl="triton")

                ref, base = reference64(p, index, count, dout), sdpa_same_dtype(p, index, count, dout)
                ok, line = gate("PBSA", outputs(pbsa, [q, kp, vp], dout, Lk), base, ref)
                print(f"  gate F={frames} BLK={BLK} d={K / NS:.3f}: {line}")
                if not ok:
                    raise GateFailed(f"F={frames} BLK={BLK} d={K / NS:.3f}: {line}")
                problems.append((index, count, K, pbsa, ref, base))
            first, dense_pairs = len(rows), problem.HEADS * p["Tq"] * Lk
            dense = (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION))
            for name, backend in dense if "sdpa" in methods else ():
                def fn(backend=backend):
                    with sdpa_kernel(backend):
                        return F.scaled_dot_product_attention(q, k, v)
                rows.append((frames, Lk, BLK, 1.0, name, measure.timed(fn, [q, k, v], dout), dense_pairs))
            for index, count, K, pbsa, ref, base in problems if "pbsa" in methods else ():
                pairs = computed_pairs(index, count, p["block_len"], p["Tq"], BLK)
                rows.append((frames, Lk, BLK, K / NS, "pbsa kernel", measure.timed(pbsa, [q, kp, vp], dout), pairs))
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
        return measure.bench(fn), "-"


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
            p = make_problem(frames, BLK, problem.DTYPE, problem.DEVICE)
            NS = p["NSc"] + p["NQB"]
            K = max(1, round(density * NS))
            own = p["NSc"] + torch.arange(p["NQB"], device=problem.DEVICE)

            def select():
                pq, pk = pool_blocks(p["q"], BLK), pool_blocks(p["k"], BLK)  # (1, H, NQB, D), (1, H, NS, D)
                return topk_blocks_torch(pq, pk, K, forced=own)

            def select_triton():
                pq, pk = pool_blocks(p["q"], BLK), pool_blocks(p["k"], BLK)
                return topk_blocks_triton(pq, pk, K, forced=own)

            index, count = select()
            t_sel = measure.bench(select)
            try:  # the fused kernel must pick the same lists (ties aside) before it is timed
                same = (select_triton()[0] == index).all(-1).float().mean().item()
                t_fused = (measure.bench(select_triton) if same >= 0.99
                           else f"n/a (differs in {1 - same:.1%} of the rows)")
            except Exception as e:
                t_fused = f"n/a ({short_error(e)})"
            try:  # what local_window's impl: auto keeps for this problem (timed once per class)
                keeps = auto_impl(pool_blocks(p["q"], BLK), pool_blocks(p["k"], BLK), K, forced=own)
            except Exception as e:
                keeps = f"n/a ({short_error(e)})"
            t_tr = measure.bench(lambda: build_transposed(index, count, NS))
            t_tr_triton = measure.bench(lambda: _transposed(index, count, NS))  # what the backward runs
            f = fwd.get((frames, BLK), "-")
            t_sel, t_fused, t_tr, t_tr_triton, f = (
                x if isinstance(x, str) else f"{x:.3f}" for x in (t_sel, t_fused, t_tr, t_tr_triton, f))
            lines.append(f"| {frames} | {BLK} | {NS} | {K} | {t_sel} | {t_fused} | {keeps} | {t_tr} / {t_tr_triton} | {f} |")
    return "\n".join(lines)
