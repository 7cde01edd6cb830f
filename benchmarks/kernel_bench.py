"""PBSA kernel benchmark at Wan2.1-1.3B shapes: a correctness gate first, then timings against dense and sparse baselines.

    python benchmarks/kernel_bench.py [--quick | --headline] [--backward] [--write] [--out FILE] [--profile]
                                      [--frames 21 63] [--blocks 64 128] [--flex-autotune] [--tiny]

1. Device checks (exit non-zero on failure): the backward's helper kernels and the fused block selection
   against PyTorch; in the full presets also Triton PBSA's edge cases (bf16 and fp16, per-head and shared
   lists, ragged tails, empty rows, BLK 64 and 128) against the fp64 reference and the PyTorch path.
2. Timings (median ms), bf16, one chunk of 3 frames x 1560 tokens, 12 heads x 128, a key sequence of F
   frames: SDPA flash and cuDNN on the full keys; PBSA alone and with the block selection that makes its
   lists; FlexAttention on the same blocks, and (--flex-autotune) with max-autotune, last. Each problem
   first passes the gate (error against fp64 at most 2x SDPA's in the same dtype, FlashAttention's rule);
   a failure stops the timings (exit 1), a baseline that fails it is not timed.
3. The launch tuner's choice per problem class and every candidate's time; with --profile, where the time
   goes kernel by kernel (torch.profiler) and the CPU time to issue a call against its full time.
--headline measures what the issue's targets need (21 frames, block 128, densities 1 and 0.25, forward;
--backward adds forward+backward); --tiny runs the same code on the CPU at toy sizes (Triton under its
interpreter), so a GPU session is not spent on a typo. Each baseline runs in try/except, so one failure
prints "n/a (reason)" and the table goes on.

This file is the command line; the parts are in ``benchmarks/kernelbench/``, one concern a module
(``problem``, ``measure``, ``checks``, ``flex``, ``timing``, ``profiling``, ``tables``, ``results``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # kernelbench/ and machine.py, however this file is loaded
from kernelbench import checks, measure, problem, profiling, results, timing  # noqa: E402
from machine import describe  # noqa: E402


def tiny() -> None:
    """The same code on the CPU at toy sizes: Triton under its interpreter, a wall-clock timer, eager Flex."""
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules are imported
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    problem.TOKENS_PER_FRAME, problem.HEADS, problem.HEAD_DIM = 20, 2, 16
    problem.DTYPE, problem.DEVICE = torch.float32, "cpu"
    profiling.LAUNCH_COST_CALLS, profiling.PROFILE_STEPS = 2, 1
    measure.bench = measure.wall_ms


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
    machine = describe(problem.DEVICE)
    print(machine)
    with measure.untuned():  # every kernel path once, in its default configuration (tests cover the others)
        passed = True if args.headline or args.tiny else checks.correctness()
        helpers, selection = checks.helpers_correct(**(dict(NSc=5, NQB=3, candidates=(20,)) if args.tiny else {}))
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
    print(f"== timings ({str(problem.DTYPE).removeprefix('torch.')}, median ms), each problem gated first")
    with timing.sigterm_stops():
        return results.report(args, frames, blocks, densities, machine, start)


if __name__ == "__main__":
    sys.exit(main())
