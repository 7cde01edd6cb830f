"""The thread benchmark at toy sizes: a cell in its own process with the thread count and wait policy
in its environment, beside a spinning process, timed step by step; the table and its slowdowns; and the
worldkit command's own choice of wait policy."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.benchmark_scripts import load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load("thread_bench")


@pytest.mark.slow
def test_a_busy_cell_trains_beside_a_spinning_process(bench, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLDKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "threads.md"
    md = bench.main(["--tiny", "--threads", "1", "--policies", "PASSIVE", "--loads", "busy", "--steps", "2",
                     "--warmup", "0", "--set", f"data.cache_dir={tmp_path / 'cache'}", *(
                         a for o in bench.TINY for a in ("--set", o)), "--out", str(out)])
    assert out.read_text() == md + "\n"
    (row,) = [line for line in md.splitlines() if line.startswith("| 1 | PASSIVE |")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2] == "-" and float(cells[3]) > 0 and cells[4] == "-"  # busy only: no idle rate, no slowdown
    assert float(cells[5]) >= 0  # the load average when the cell started


def test_the_table_gives_the_slowdown_of_a_busy_core(bench):
    results = {(2, "default", False): {"steps": 4, "seconds": 4.0, "cut": False, "load": 0.1},
               (2, "default", True): {"steps": 2, "seconds": 100.0, "cut": True, "load": 1.04},
               (2, "PASSIVE", False): {"steps": 4, "seconds": 4.0, "cut": False, "load": 0.2},
               (2, "PASSIVE", True): {"steps": 4, "seconds": 6.0, "cut": False, "load": 1.0}}
    rows = bench.table(results, [2], ["default", "PASSIVE"]).splitlines()[2:]
    assert rows == ["| 2 | default | 1 | 0.02 (2 steps, cut) | 50.0x | 0.1 / 1.0 |",
                    "| 2 | PASSIVE | 1 | 0.667 | 1.5x | 0.2 / 1.0 |"]


def test_the_worldkit_command_sets_the_wait_policy_unless_the_environment_says_one():
    from worldkit import threads

    env = {}
    assert threads.configure(env) == {"OMP_WAIT_POLICY": "PASSIVE"} and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert threads.configure(env) == {} and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    show = ("import os, sys; from worldkit import cli; early = 'torch' in sys.modules; "
            "cli.main(['plugins', '--kind', 'selector']); print(os.environ['OMP_WAIT_POLICY'], early)")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, seen in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = {**base, **({"OMP_WAIT_POLICY": given} if given else {})}
        out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, env=env, timeout=120)
        assert out.stdout.splitlines()[-1] == f"{seen} False", out.stderr[-2000:]  # set before torch loads
