"""The static kernel report (benchmarks/kernel_static.py): the PBSA kernels compiled for sm_90 on this
machine, no GPU needed. Run as a subprocess, because the other kernel tests import the kernels under
TRITON_INTERPRET=1 and an interpreted kernel cannot be compiled."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "kernel_static.py"


def run_report(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--blocks", "128", "--defaults", "--json", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=600)
    rows = json.loads(out.read_text()) if out.exists() else []
    if proc.returncode != 0 and (not rows or all("ptxas" in r.get("error", "").lower() for r in rows)) and (
            "ptxas" in (proc.stdout + proc.stderr).lower()):
        pytest.skip(f"Triton cannot compile for sm_90 here (no ptxas): {proc.stderr.strip().splitlines()[-1:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton not installed"),
]


def test_default_configurations_pipeline_their_tile_loads_without_spilling(tmp_path):
    """At the benchmark's shapes (bf16, head dim 128, block 128, ragged chunk tail), each kernel's
    default configuration keeps its tile loads in flight (asynchronous copies) and spills at most a few
    words: the forward's default, the fastest on an H200, spills 8 bytes with Triton 3.6 and 24 with 3.9;
    the candidates dropped for spilling spilled hundreds."""
    rows, text = run_report(tmp_path)
    assert [r["kernel"] for r in rows] == ["fwd", "dq", "dkdv"]
    for r in rows:
        assert r["async_tiles"] >= 2, r  # K and V (forward, dQ) or Q and dO (dK/dV)
        assert r["spill"] <= 32, r
        assert 0 < r["regs"] <= 255 and r["programs_per_sm"] >= 1, r
    assert [r["spill"] for r in rows[1:]] == [0, 0]  # dQ and dK/dV spill nothing
    assert "| 128 | fwd | 0 | M128 N128 w8 s3 |" in text  # the markdown table names what it compiled


def test_defaults_at_a_64_row_block_are_those_a_launch_runs(tmp_path):
    """The report compiles, as each kernel's default at block 64, the configuration a launch there runs
    (the first made for a 64-row tile), not the 128-row default capped."""
    rows, _ = run_report(tmp_path, "--blocks", "64")
    assert [r["config"]["num_warps"] for r in rows] == [4, 4, 4]  # the H200's winners at block 64
    assert all(v <= 64 for r in rows for k, v in r["config"].items() if k.startswith("BLOCK_"))


def test_ragged_blocks_run_full_slots_in_the_same_loop_as_full_blocks(tmp_path):
    """With ragged blocks the forward runs its full slots first in a loop as lean as the one for lists
    without lengths (no masks, no extra barrier, the same prefetch), then the short slots in a masked
    loop: the packed, ordered lists keep the per-slot length out of the hot loop."""
    ragged, _ = run_report(tmp_path, "--kernels", "fwd")
    full, _ = run_report(tmp_path, "--kernels", "fwd", "--full-blocks")
    (main, masked), (plain,) = ragged[0]["loop_instructions"], full[0]["loop_instructions"]
    assert abs(main - plain) <= 0.05 * plain < masked - main  # the masks are visible, so the count is live
    assert ragged[0]["loop_barriers"][0] == full[0]["loop_barriers"][0]
    assert ragged[0]["async_tiles"] >= full[0]["async_tiles"] >= 2


def test_report_shows_a_loop_without_pipelining(tmp_path):
    """With one pipeline stage nothing can be prefetched: the report must say 0, so its count of
    pipelined copies is not vacuous."""
    rows, _ = run_report(tmp_path, "--kernels", "fwd", "--num-stages", "1")
    assert len(rows) == 1 and rows[0]["config"]["num_stages"] == 1
    assert rows[0]["async_tiles"] == 0


def test_occupancy_arithmetic():
    spec = importlib.util.spec_from_file_location("kernel_static_occ", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # imports only; main() is not run
    # 128 registers x 8 warps = 32768 of 65536; 96 KiB (+1 KiB reserved) twice fits 228 KiB
    assert mod.occupancy(128, 96 * 1024, 8, 90) == dict(programs_per_sm=2, warps_per_sm=16,
                                                         limit="registers and shared memory")
    assert mod.occupancy(128, 64 * 1024, 8, 90)["limit"] == "registers"
    # both bind at one program: both are named
    assert mod.occupancy(187, 128 * 1024, 8, 90)["limit"] == "registers and shared memory"
    # 130 registers round up to 136 per thread: one program of 8 warps
    assert mod.occupancy(130, 96 * 1024, 8, 90)["programs_per_sm"] == 1
    # shared memory binds: 160 KiB per program
    assert mod.occupancy(64, 160 * 1024, 4, 90) == dict(programs_per_sm=1, warps_per_sm=4, limit="shared memory")
    # a smaller SM (sm_89: 100 KiB) fits one 80 KiB program where sm_90 fits two
    assert mod.occupancy(96, 80 * 1024, 4, 89)["programs_per_sm"] == 1
    assert mod.occupancy(96, 80 * 1024, 4, 90)["programs_per_sm"] == 2


def test_helper_kernels_compile_without_spilling(tmp_path):
    """The small kernels around the main three (list packing, the backward's transposed lists in two
    passes, its delta) compile for sm_90 as launched at the benchmark's shapes, spilling nothing."""
    rows, _ = run_report(tmp_path, "--kernels", "--helpers")
    assert [r["kernel"] for r in rows] == ["pack", "mark", "compact", "delta"]
    for r in rows:
        assert "error" not in r and r["spill"] == 0 and 0 < r["regs"] <= 255, r
