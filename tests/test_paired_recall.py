"""benchmarks/paired_recall.py: recall of stages from different runs paired episode by episode with a
reference stage, refused when the stages were scored on different episodes."""
import json
import math

import pytest
from tests.benchmark_scripts import load


def write(run, stage, per_episode, returns=(3, 2), episodes=3):
    folder = run / "stages" / stage
    folder.mkdir(parents=True)
    k = len(per_episode[0])
    means = [(sum(r[j] for r in per_episode if not math.isnan(r[j])) / len(per_episode), 0.1) for j in range(k)]
    recall = {"buckets": [f"{4 * 2 ** j} (x)" for j in range(k)], "gaps": [1, 7], "returns": list(returns),
              "per_episode": {"colour": {"model": per_episode}}, "stats": {"colour": {"model": means}},
              "false_alarm": {"model": [0.2, 0.05]}}
    ev = {"episodes": episodes, "seeds": 1, "context_frames": 10, "horizons": [1, 2, 6], "recall": recall}
    (folder / "eval.json").write_text(json.dumps(ev))
    (folder / "summary.json").write_text(json.dumps({"stage": stage, "memory": "sliding_window"}))


@pytest.fixture(scope="module")
def bench():
    return load("paired_recall")


def test_rows_from_other_runs_are_paired_episode_by_episode_with_the_reference(bench, tmp_path):
    write(tmp_path / "a", "0-sparse_forcing_dmd", [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    write(tmp_path / "b", "1-window_9_dmd", [[0.0, 0.0], [1.0, 0.0], [0.0, float("nan")]])
    md = bench.table([str(tmp_path / "a" / "sparse_forcing_dmd")], str(tmp_path / "b" / "window_9_dmd"))
    (row,) = [line for line in md.splitlines() if line.startswith("| `a/sparse_forcing_dmd`")]
    # episode differences: bucket 0 (1, 0, 0) -> 0.33 ± 0.33; bucket 1 (0, 1), the undefined one dropped -> 0.50 ± 0.50
    assert row.rstrip(" |").endswith("+0.33 ± 0.33 | +0.50 ± 0.50")
    assert "vs `b/window_9_dmd` gap 4" in md


def test_stages_scored_on_other_episodes_are_refused(bench, tmp_path):
    write(tmp_path / "a", "0-sparse_forcing_dmd", [[1.0, 0.0]] * 3)
    write(tmp_path / "b", "0-window_9_dmd", [[0.0, 0.0]] * 3, returns=(3, 1))
    with pytest.raises(SystemExit, match="returns differ"):
        bench.table([str(tmp_path / "a" / "sparse_forcing_dmd")], str(tmp_path / "b" / "window_9_dmd"))


def test_a_stage_that_is_not_there_is_named(bench, tmp_path):
    write(tmp_path / "a", "0-sparse_forcing_dmd", [[1.0, 0.0]] * 3)
    with pytest.raises(SystemExit, match="a/window_9_dmd: expected RUN/STAGE"):
        bench.table([str(tmp_path / "a" / "sparse_forcing_dmd")], str(tmp_path / "a" / "window_9_dmd"))
