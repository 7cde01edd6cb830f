"""benchmarks/train_deploy.py: weights x deploy policies, read from eval folders, resumable, drawn."""
import json

import numpy as np
import pytest
import torch
import yaml

from tests.benchmark_scripts import load


def fake_eval(path, colour, psnr=(20.0, 0.5)):
    """An eval.json with the fields the matrix reads: colour recall per episode and gap, PSNR per horizon."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "buckets": {"psnr": {"model": [[30.0, 0.1], list(psnr)]}},
        "quality": {"fd": {"model": [[5.0, 1.0], [7.0, 1.0]]}},
        "recall": {"gaps": [4, 8, 16], "per_episode": {"colour": {"model": colour}}},
    }))


def test_recall_beyond_the_window_averages_each_episodes_returns_past_the_gap(tmp_path):
    td = load("train_deploy")
    nan = float("nan")
    fake_eval(tmp_path / "e.json", [[1.0, 0.5, 0.0], [0.0, nan, 1.0], [1.0, nan, nan]])  # the third: no return >= 8
    got = td.read_eval(tmp_path / "e.json", beyond=8)
    per = np.array([0.25, 1.0])
    assert got["recall"][0] == pytest.approx(per.mean())
    assert got["recall"][1] == pytest.approx(per.std(ddof=1) / np.sqrt(2))
    assert got["psnr"] == (20.0, 0.5) and got["fd"] == (7.0, 1.0)  # the longest horizon
    assert td.read_eval(tmp_path / "e.json", beyond=4)["recall"][0] == pytest.approx(np.mean([0.5, 0.5, 1.0]))


def test_matrix_from_evaluated_folders_marks_each_rows_best(tmp_path):
    td = load("train_deploy")
    for t, scores in {"a": (0.2, 0.6), "b": (0.9, 0.1)}.items():
        for i, (d, s) in enumerate(zip(["window", "memory"], scores)):
            fake_eval(tmp_path / t / "stages" / f"{i}-{d}" / "eval.json", [[s, s, s]], psnr=(10 + 10 * s, 0.1))
    cells = {t: td.read_folder(tmp_path / t, ["window", "memory"], 8) for t in "ab"}
    md = td.matrix_markdown(cells, ["a", "b"], ["window", "memory"], "recall")
    assert "| a | 0.20 ± nan" not in md
    assert "| a | 0.20 | **0.60** |" in md and "| b | **0.90** | 0.10 |" in md
    fd = td.matrix_markdown(cells, ["a", "b"], ["window", "memory"], "fd")
    assert "| a | **7.00 ± 1.00** | **7.00 ± 1.00** |" in fd  # ties: both best
    td.heatmap(cells, ["a", "b"], ["window", "memory"], "recall", tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000


@pytest.mark.slow
def test_matrix_evaluates_weights_under_every_deploy_policy_once(tmp_path, monkeypatch):
    from worldkit import experiment
    from worldkit.checkpoints import save_weights
    from worldkit.model import WorldModel

    td = load("train_deploy")
    raw = {"name": "deploy", "seed": 0, "env": {"type": "pendulum", "size": 16},
           "data": {"train_episodes": 2, "val_episodes": 1, "test_episodes": 2, "episode_frames": 12,
                    "cache_dir": str(tmp_path / "cache")},
           "model": {"patch": 4, "width": 32, "layers": 2, "heads": 2, "block_patches": 2, "chunk_frames": 2,
                     "sampler_steps": 2},
           "train": {"max_steps": 0, "clip_frames": 4},
           "eval": {"horizons": [1, 2], "episodes": 2, "context_frames": 2, "probe_steps": 5},
           "stages": [{"name": "window", "memory": {"type": "sliding_window", "window_frames": 4}}],
           "compare": [{"name": "dense", "memory": {"type": "dense"}}]}
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump(raw))
    torch.manual_seed(0)
    save_weights(WorldModel(frame_size=16, action_dim=1, patch=4, width=32, layers=2, heads=2, block_patches=2,
                            chunk_frames=2), tmp_path / "w.pt")
    args = [str(tmp_path / "deploy.yaml"), "--weights", f"x={tmp_path / 'w.pt'}", f"y={tmp_path / 'w.pt'}",
            "--out", str(tmp_path / "m")]
    assert td.main(args) == 0
    md = (tmp_path / "m" / "matrix.md").read_text()
    assert "| trained \\ deployed | window | dense |" in md and "| x |" in md and "| y |" in md
    assert (tmp_path / "m" / "matrix_psnr.png").exists()
    x = [r for r in md.splitlines() if r.startswith("| x |")][0]
    y = [r for r in md.splitlines() if r.startswith("| y |")][0]
    assert x[4:] == y[4:]  # the same weights score the same
    monkeypatch.setattr(experiment, "evaluate_weights", lambda *a: pytest.fail("evaluated again"))
    assert td.main(args) == 0  # every folder complete: read, not evaluated
