"""How a call is timed: ``bench`` (``triton.testing.do_bench``; ``wall_ms`` on the CPU, where
``kernel_bench.tiny()`` puts it in ``bench``'s place), ``timed`` (forward, forward+backward), PBSA with its
default launch configurations (``untuned``), and a failure's reason on one line (``short_error``).

The other modules call ``measure.bench`` and ``measure.timed`` by attribute, so that one swap (--tiny, a
test) reaches every caller."""
from __future__ import annotations

import contextlib
import os
import time

import torch


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


def wall_ms(fn, grad_to_none=None, n=1):
    """Mean wall-clock ms of ``n`` calls of ``fn`` after one (``bench`` on the CPU, --tiny), or the reason it failed."""
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
