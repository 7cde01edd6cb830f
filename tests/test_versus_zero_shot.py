"""benchmarks/versus_zero_shot.py: trained rows against the zero-shot row of the same policy, with Δ in
combined standard errors, from run folders' stage summaries."""
import json

import pytest
from tests.benchmark_scripts import load


def summary(stage: str, fd: float, fd_se: float, **extra) -> dict:
    s = {"stage": stage, "fd@6x": fd, "fd_se@6x": fd_se, "false_alarm": 0.2, "false_alarm_se": 0.05}
    for key in ("psnr", "sharpness", "physics"):
        s[f"{key}@6x"], s[f"{key}_se@6x"] = 1.0, 0.1
    s["motion@1x"], s["motion_se@1x"] = 1.0, 0.1
    s.update({f"recall@{g}": 0.1 * i for i, g in enumerate((8, 16, 32, 64))})
    s.update(extra)
    return s


def write(run, stages):
    for s in stages:
        folder = run / "stages" / s["stage"]
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(s))


@pytest.fixture(scope="module")
def bench():
    return load("versus_zero_shot")


def test_each_trained_row_is_read_against_its_policys_zero_shot_row(bench, tmp_path):
    zero, trained = tmp_path / "zero", tmp_path / "dmd"
    write(zero, [summary("0-window_4_zero_shot", 20.0, 3.0), summary("1-window_9_zero_shot", 10.0, 1.0),
                 summary("2-dense_zero_shot", 5.0, 1.0)])
    write(trained, [summary("0-window_4_dmd", 12.0, 4.0), summary("1-window_9_dmd", 13.0, 0.0),
                    summary("2-window_4_zero_shot", 99.0, 1.0)])
    lines = bench.main([str(trained), "--zero-shot", str(zero)]).splitlines()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in lines[2:]}
    # (12 - 20) / hypot(4, 3) = -1.6; (13 - 10) / hypot(0, 1) = +3.0: each against its own policy
    assert "12.0 ± 4.0 (-1.6)" in rows[("window_4", "window_4_dmd (`dmd`)")]
    assert "13.0 ± 0.0 (+3.0)" in rows[("window_9", "window_9_dmd (`dmd`)")]
    assert "20.0 ± 3.0 |" in rows[("window_4", "zero-shot")]  # the reference row carries no Δ
    # a zero-shot stage in a trained run is not a trained row, and a policy nobody trained is left out
    assert not any("99.0" in line for line in lines) and not any(line.startswith("| dense") for line in lines)
    assert "0.00 / 0.10 / 0.20 / 0.30" in rows[("window_4", "window_4_dmd (`dmd`)")]
    # the per-frame motion ratio sits before the physics column; false alarms stay last
    assert lines[0].split(" | ")[5:8] == ["motion@1x →1", "physics@6x →1", "recall gap 8 / 16 / 32 / 64 ↑"]
    assert lines[0].endswith("false alarm ↓ |")


def test_pool_folds_the_runs_of_one_stage_into_mean_and_seed_error(bench, tmp_path):
    zero = tmp_path / "zero"
    write(zero, [summary("0-window_9_zero_shot", 15.0, 2.0), summary("1-dense_zero_shot", 5.0, 1.0)])
    runs = []
    for i, fd in enumerate((10.0, 20.0, 30.0)):
        run = tmp_path / f"seed{i}"
        extra = {f"recall@{g}": 0.1 * i for g in (8, 16, 32, 64)}
        stages = [summary("0-window_9_dmd", fd, 0.5, **extra)]
        if i == 0:
            stages.append(summary("1-dense_dmd", 7.0, 1.0))
        write(run, stages)
        runs.append(str(run))
    lines = bench.main([*runs, "--zero-shot", str(zero), "--pool"]).splitlines()
    pooled = [line for line in lines if "window_9_dmd" in line]
    assert len(pooled) == 1 and "n = 3 (`seed0`, `seed1`, `seed2`)" in pooled[0]
    # mean 20, sample sd 10, error over seeds 10 / sqrt(3) = 5.8 (not the runs' own 0.5);
    # Δ = (20 - 15) / hypot(5.77, 2) = +0.8
    assert "20.0 ± 5.8 (+0.8)" in pooled[0]
    assert "0.10 / 0.10 / 0.10 / 0.10" in pooled[0]  # recall: the mean over the runs
    # a stage one run trained keeps that run's row and its error over episodes, labelled as such
    dense = [line for line in lines if "dense_dmd" in line]
    assert len(dense) == 1 and "one run (`seed0`)" in dense[0] and "7.0 ± 1.0 (+1.4)" in dense[0]
    # without --pool: one row per run
    assert sum("window_9_dmd" in line for line in bench.main([*runs, "--zero-shot", str(zero)]).splitlines()) == 3


def test_only_keeps_the_named_trained_stages(bench, tmp_path):
    zero, run = tmp_path / "zero", tmp_path / "run"
    write(zero, [summary("0-window_9_zero_shot", 15.0, 2.0), summary("1-dense_zero_shot", 5.0, 1.0)])
    write(run, [summary("0-window_9_dmd", 10.0, 1.0), summary("1-dense_dmd", 7.0, 1.0)])
    lines = bench.main([str(run), "--zero-shot", str(zero), "--only", "dense_dmd"]).splitlines()
    assert any("dense_dmd" in line for line in lines) and not any("window_9" in line for line in lines)
