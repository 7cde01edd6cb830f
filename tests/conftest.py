"""Session setup for the tests.

Triton runs under its interpreter on the CPU: TRITON_INTERPRET=1 is set here, before any test module
imports the kernels, whatever order the modules are collected in (a kernel module imported without it
is compiled for a GPU, and the interpreter tests would skip). On Linux, where Triton is a dependency, a
test that skips for want of Triton or its interpreter fails instead: the kernels would go untested
without a word. A skip for want of the CUDA compiler (ptxas) stays a skip.
"""
import os
import sys

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest_plugins = ["pytester"]

ALLOWED_TRITON_SKIPS = ("ptxas",)


def triton_skip(reason: str) -> bool:
    """Whether a skip reason says Triton (or its interpreter) was missing, and that is not allowed."""
    return "triton" in reason.lower() and not any(word in reason for word in ALLOWED_TRITON_SKIPS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and sys.platform.startswith("linux")) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if triton_skip(reason):
        report.outcome = "failed"
        report.longrepr = (f"a Triton test skipped on Linux, where Triton is a dependency ({reason}); were the "
                           "kernels imported before TRITON_INTERPRET=1 was set?")
