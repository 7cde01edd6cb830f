"""One line on what a benchmark ran on: card and driver (or CPU), torch / CUDA / cuDNN / Triton versions,
and the commit. On a machine that got a copy of the working tree without its git history, the commit
comes from ``WORLDKIT_COMMIT`` (set it where the copy was made), else it reads "unknown"."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(*cmd: str) -> str | None:
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def commit() -> str:
    """``WORLDKIT_COMMIT`` if set, else git's HEAD (noting uncommitted changes to tracked files), else
    "unknown"."""
    given = os.environ.get("WORLDKIT_COMMIT")
    if given:
        return f"{given} (as given by WORLDKIT_COMMIT)"
    head = _run("git", "rev-parse", "--short=10", "HEAD")
    if not head:
        return "unknown (no git history here: set WORLDKIT_COMMIT)"
    dirty = _run("git", "status", "--porcelain", "--untracked-files=no")
    return head + (" with uncommitted changes" if dirty else "")


def describe(device: torch.device | str = "cuda") -> str:
    """'card (driver, memory), torch, CUDA, cuDNN, triton; commit', or the CPU's equivalent."""
    try:
        import triton

        tri = f"triton {triton.__version__}"
    except ImportError:
        tri = "no triton"
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        driver = _run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
        driver = driver.splitlines()[0] if driver else "?"
        where = (f"{props.name} (driver {driver}, {props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
                 f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        where = (f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, "
                 f"torch {torch.__version__}")
    return f"{where}, {tri}; commit {commit()}"
