"""benchmarks/gpu_session.sh, the script a lent GPU runs once: its syntax, the arguments it passes on the
GPU (parsed by the benchmarks' own parsers, every phase within the device's 10-minute call), and a dry run
of its kernel and decode phases on the CPU at toy sizes through the same code."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.benchmark_scripts import load

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"



def test_syntax():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_arguments_parse(tmp_path):
    """With a stand-in for Python that only records its arguments, the GPU mode's commands are what
    the benchmarks accept: the kernel headline and the decode preset at Wan shapes, each under a timeout
    that leaves the 10-minute device call room for the other."""
    calls = tmp_path / "calls.jsonl"
    stub = tmp_path / "stub.py"
    stub.write_text(f"import json, sys\nopen({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    env = dict(os.environ, PHASE="kernels,decode", OUT=str(tmp_path / "out"), PYTHON=f"{sys.executable} {stub}",
               DECODE_SKIP="dense@12")
    subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, check=True, capture_output=True)
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    benches = {Path(a[0]).stem: a[1:] for a in argvs if a and a[0].startswith("benchmarks/")}
    assert set(benches) == {"kernel_bench", "decode_bench"}
    k = load("kernel_bench").parser().parse_args(benches["kernel_bench"])
    assert k.headline and k.profile and not k.tiny and k.out == Path("/tmp/worldkit_kernels.md")
    d = load("decode_bench").parser().parse_args(benches["decode_bench"])
    assert (d.preset, d.device, d.dtype, d.horizons, d.sdpa, d.skip) == ("wan", "cuda", "bfloat16", [1, 4, 12], "cudnn", ["dense@12"])
    assert d.profile == [] and d.impl == "auto" and d.out == Path("/tmp/worldkit_decode.md")
    text = SCRIPT.read_text()
    assert "${KERNEL_S:-150}" in text and "${DECODE_S:-170}" in text  # 320 s + 30 s of kills < 600 s


@pytest.mark.slow
def test_dry_run_on_the_cpu(tmp_path):
    """DRY=1: both phases end to end on the CPU (about a minute); three files come back, the markdown
    holds both sections, every cell measured."""
    env = dict(os.environ, DRY="1", OUT=str(tmp_path), PYTHON=sys.executable, WORLDKIT_COMMIT="abc123")
    done = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS_gpu.md", "decode.log", "kernels.log"]
    md = (tmp_path / "RESULTS_gpu.md").read_text()
    assert "(kernels: exit status 0," in md and "(decode: exit status 0," in md
    assert "## PBSA kernel" in md and "### Decode speed and KV memory" in md and md.count("commit abc123") == 2
    cells = {tuple(c.strip() for c in line.split("|")[1:3]) for line in md.splitlines() if line.startswith("| ")}
    assert {(v, f"{h}x") for v in ("dense", "sliding_window", "sink", "sparse_forcing") for h in (1, 4, 12)} <= cells
    assert "failed" not in md and "GATE FAILED" not in md
