"""The host (Python) cost of one PBSA call through the Triton path, with every kernel launch stubbed out.

    python benchmarks/host_cost.py [--repeats 5] [--calls 200]

Short attention steps are bound by the CPU that issues their kernels (benchmarks/RESULTS.md, "PBSA
kernel on an NVIDIA H200", section 2). This measures the part of that cost that does not need a GPU:
autograd (the eager path's Function; traced code's custom op is not timed), the list preparation and
the launch bookkeeping, with each Triton kernel replaced by a stand-in that does nothing, on CPU
tensors small enough that the remaining PyTorch ops cost next to nothing. Prints the best of ``--repeats`` runs of the mean ms per call (forward without
grad, forward + backward). It omits what a real launch adds: Triton's own launcher and the driver.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
importlib.import_module("kernelbench")  # makes the kernels importable from a bare checkout

from worldkit_kernels import pbsa_attention  # noqa: E402
from worldkit_kernels.pbsa_triton import backward, forward, lists, tuner  # noqa: E402

MODULES = (forward, backward, lists)  # the modules that launch the kernels
KERNELS = ("_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel", "_pack_kernel", "_mark_kernel", "_compact_kernel",
           "_delta_kernel")


class NoLaunch:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kwargs)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def stubbed():
    """Every PBSA kernel stubbed and the launch tuner off (one configuration per launch)."""
    with contextlib.ExitStack() as stack:
        for P in MODULES:
            for name in KERNELS:
                if hasattr(P, name):  # each module launches some of them
                    stack.enter_context(mock.patch.object(P, name, NoLaunch()))
        stack.enter_context(mock.patch.object(tuner, "tuning", lambda: False))
        yield


def host_ms(calls: int = 200, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` mean ms per call: {"forward": ..., "forward + backward": ...}."""
    B, H, D, BLK, NS, Tq, K = 1, 2, 16, 16, 24, 64, 4  # tiny: the PyTorch ops left cost next to nothing
    NQB = -(-Tq // BLK)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, Tq, D, generator=g, requires_grad=True)
    k = torch.randn(B, NS, H, BLK, D, generator=g, requires_grad=True)
    v = torch.randn(B, NS, H, BLK, D, generator=g, requires_grad=True)
    index = torch.arange(K, dtype=torch.int32).expand(B, H, NQB, K).contiguous()
    count = torch.full((B, H, NQB), K, dtype=torch.int32)
    block_len = torch.full((B, NS), BLK, dtype=torch.int32)
    dout = torch.randn(B, H, Tq, D, generator=g)

    def forward():
        with torch.no_grad():
            pbsa_attention(q, k, v, index, count, block_len, impl="triton")

    def forward_backward():
        for t in (q, k, v):
            t.grad = None
        pbsa_attention(q, k, v, index, count, block_len, impl="triton").backward(dout)

    best = {}
    with stubbed():
        for name, fn in (("forward", forward), ("forward + backward", forward_backward)):
            fn()  # warm up
            for _ in range(repeats):
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                ms = (time.perf_counter() - start) / calls * 1e3
                best[name] = min(best.get(name, ms), ms)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    print(f"torch {torch.__version__}; kernels stubbed; best of {args.repeats} x {args.calls} calls\n")
    print("| call | host ms per call |\n|---|---|")
    for name, ms in host_ms(args.calls, args.repeats).items():
        print(f"| {name} | {ms:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
