"""The end-to-end decode benchmark on the CPU at toy sizes, through the code paths the GPU run takes: all
four variants, the rehearsed and timed chunks, the selection / attention / rest split, the table with its
ratios and targets, the profile, and (under the Triton interpreter) Sparse Forcing's Triton selection
and PBSA."""
import os
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # the Triton paths run on the CPU, through the interpreter

import pytest
import torch
from tests.benchmark_scripts import load

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def bench():
    return load("decode_bench")


def table_rows(md):
    """{(variant, horizon): cells} of the markdown table."""
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 11 and cells[1].endswith("x") and cells[0] != "variant":
            rows[cells[0], cells[1]] = cells
    return rows


def test_all_variants_split_and_ratios(bench, tmp_path, monkeypatch):
    """Every variant at two horizons: the split adds up, only Sparse Forcing selects, ratios are taken
    against the sliding window of the same horizon, targets are judged, profiles and the file written."""
    monkeypatch.setenv("WORLDKIT_COMMIT", "abc123")
    out = tmp_path / "decode.md"
    md = bench.main(["--preset", "tiny", "--horizons", "1", "2", "--reps", "2", "--impl", "torch",
                     "--profile", "--out", str(out)])
    assert out.read_text() == md + "\n"
    assert "commit abc123 (as given by WORLDKIT_COMMIT)" in md and "2 x 4 patches = 8 tokens" in md
    rows = table_rows(md)
    assert set(rows) == {(v, h) for v in ("dense", "sliding_window", "sink", "sparse_forcing") for h in ("1x", "2x")}
    for (name, h), c in rows.items():
        total, sel, att, rest = (float(x) for x in c[2:6])
        assert total > 0 and att > 0 and rest > 0 and abs(sel + att + rest - total) < 0.2, c
        if name != "sparse_forcing":
            assert sel < 0.1 * total and c[10] == ""  # AllBlocks returns at once; no targets
    sf, win = rows["sparse_forcing", "1x"], rows["sliding_window", "1x"]
    assert float(sf[3]) > 0
    assert abs(float(sf[8].rstrip("x")) - float(win[2]) / float(sf[2])) < 0.02  # speed: window's time over this one's
    assert win[8] == win[9] == "1.00x"
    assert sf[9] == "0.73x"  # 1 sink + 2 persistent + 5 local frames against 11 cached (1-frame chunks)
    assert "speed >= 1.15x" in sf[10] and "KV <= 0.55x: MISSED" in sf[10]
    assert "speed" not in rows["sparse_forcing", "2x"][10]  # no speed target at 2x
    assert float(rows["dense", "2x"][9].rstrip("x")) > 1  # dense keeps growing
    assert md.count("spends its time (torch.profiler)") == 2 and "CPU busy" in md


def test_sparse_forcing_runs_the_triton_paths(bench, monkeypatch):
    """With impl triton (here under the interpreter) every selection and attention call of Sparse
    Forcing goes through the fused top-K kernel and Triton PBSA, on non-square frames and blocks."""
    pytest.importorskip("triton")
    from worldkit_kernels import pbsa_triton, topk_triton

    calls = {"topk": 0, "pbsa": 0}

    def spy(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(topk_triton, "topk_blocks_triton", spy("topk", topk_triton.topk_blocks_triton))
    monkeypatch.setattr(pbsa_triton, "pbsa_triton", spy("pbsa", pbsa_triton.pbsa_triton))
    md = bench.main(["--preset", "tiny", "--horizons", "1", "--reps", "1", "--impl", "triton",
                     "--variants", "sparse_forcing"])
    cells = table_rows(md)["sparse_forcing", "1x"]
    assert float(cells[3]) > 0 and float(cells[4]) > 0
    assert calls == {"topk": 10, "pbsa": 10}  # (4 denoising + 1 commit pass) x 1 layer, rehearsed and timed
    assert "PBSA launch configurations" in md


def test_a_failing_cell_is_said_and_the_rest_measured(bench, monkeypatch):
    real = bench.measure

    def measure(model, variant, *a, **k):
        if variant[0]["type"] == "sink":
            raise RuntimeError("boom\nsecond line")
        return real(model, variant, *a, **k)

    monkeypatch.setattr(bench, "measure", measure)
    md = bench.main(["--preset", "tiny", "--horizons", "1", "--reps", "1", "--impl", "torch",
                     "--variants", "sliding_window", "sink", "--skip", "dense@1"])
    assert "| sink | 1x | failed: RuntimeError: boom second line |" in md
    assert ("sliding_window", "1x") in table_rows(md)


def test_split_timer_adds_up_per_name(bench):
    timer = bench.SplitTimer(torch.device("cpu"))
    nap = timer.wrap("a", lambda s: (time.sleep(s), s)[1])
    assert nap(0.01) == 0.01 and nap(0.02) == 0.02
    assert 30 <= timer.take("a") < 200
    assert timer.take("a") == 0 and timer.take("never") == 0


def test_an_unbounded_pool_is_made_at_the_size_reserved():
    """``reserve_slots`` sizes dense's pool up front (no doubling copy at the benchmark's horizons);
    bounded pools keep their size."""
    from worldkit.model import WorldModel
    from worldkit import registry

    model = WorldModel(frame_size=(4, 8), action_dim=2, patch=2, width=16, layers=1, heads=1,
                       block_patches=(2, 1), chunk_frames=1)
    spec = model.cache_spec(1, 12)
    sizes = {}
    for kind in ("dense", "sliding_window"):
        for reserve in (None, 400):
            mem = registry.build("memory", {"type": kind})
            mem.reserve_slots = reserve
            mem.reset(spec)
            sizes[kind, reserve] = mem.capacity
    assert sizes["dense", None] == 4 * spec.chunk_blocks and sizes["dense", 400] == 400
    assert sizes["sliding_window", None] == sizes["sliding_window", 400] == 11 * 4


def test_target_words(bench):
    assert bench.target(12, 1.31, 0.5) == "speed >= 1.3x: met; KV <= 0.55x: met"
    assert bench.target(1, 1.1, 0.6) == "speed >= 1.15x: MISSED; KV <= 0.55x: MISSED"
    assert bench.target(4, 2.0, None) == "-"
