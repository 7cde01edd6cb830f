"""benchmarks/versus_zero_shot.py: trained rows against the zero-shot row of the same policy, with Δ in
combined standard errors, from run folders' stage summaries."""
import json

import pytest
from tests.benchmark_scripts import load


def summary(stage: str, fd: float, fd_se: float, **extra) -> dict:
    s = {"stage": stage, "fd@6x": fd, "fd_se@6x": fd_se, "false_alarm": 0.2, "false_alarm_se": 0.05}
    for key in ("psnr", "sharpness", "physics"):
        s[f"{key}@6x"], s[f"{key}_se@6x"] = 1.0, 0.1
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
