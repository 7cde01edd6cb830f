"""The host-cost benchmark (benchmarks/host_cost.py): every PBSA kernel stubbed, the Python cost timed."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: any test module run after this one may launch kernels

import pytest
from tests.benchmark_scripts import load

pytest.importorskip("triton")


@pytest.fixture()
def host_cost():
    return load("host_cost")


def test_every_kernel_is_stubbed(host_cost):
    """A kernel added to a kernel module without a stub would launch (and fail, or be timed) here."""
    kernels = {name for P in host_cost.MODULES for name, obj in vars(P).items()
               if type(obj).__name__ in ("JITFunction", "InterpretedFunction") and not getattr(obj, "noinline", False)
               and name.endswith("_kernel")}
    assert kernels == set(host_cost.KERNELS)


def test_host_cost_times_both_passes(host_cost, monkeypatch):
    """Both passes run through the stubbed Triton path (no kernel runs) and take positive time; the
    backward adds to the forward."""
    launched = []
    monkeypatch.setattr(host_cost.NoLaunch, "__getitem__", lambda self, grid: lambda *a, **k: launched.append(grid))
    ms = host_cost.host_ms(calls=3, repeats=1)
    assert list(ms) == ["forward", "forward + backward"]
    assert 0 < ms["forward"] < ms["forward + backward"]
    assert launched  # the stand-ins were called in place of the kernels
