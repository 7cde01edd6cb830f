"""benchmarks/runs/continue_stages.py: a copied run whose chosen stages a resume trains on to a larger
budget, the others left finished."""
from pathlib import Path

import pytest
import yaml
from tests.benchmark_scripts import load

from worldkit import config
from worldkit.stages import resolve_stages, stage_finished


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tool():
    return load("runs/continue_stages")


def finished_run(tmp_path):
    raw = yaml.safe_load((ROOT / "experiments" / "rollout_training_policies.yaml").read_text())
    raw["compare"], raw["eval"]["reference"] = [], None
    raw["stages"] = [{"name": "a", "memory": {"type": "dense"}}, {"name": "b", "memory": {"type": "dense"}}]
    src = tmp_path / "src"
    cfg = config.validate(raw)
    src.mkdir()
    (src / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    for stage in resolve_stages(cfg):
        folder = src / "stages" / stage.dirname
        (folder / "checkpoints").mkdir(parents=True)
        for f in ("model.pt", "eval.json", "summary.json", "checkpoints/last.ckpt"):
            (folder / f).write_text(stage.name)
    (src / "tb").mkdir()
    return src, cfg


def test_reopened_stages_resume_to_the_new_budget_and_the_rest_stay_finished(tool, tmp_path):
    src, cfg = finished_run(tmp_path)
    dst = tmp_path / "dst"
    tool.main([str(src), str(dst), "1200", "b"])
    new = config.load(dst / "config.yaml")
    steps = {s.name: s.train.max_steps for s in resolve_stages(new)}
    assert steps == {"a": cfg.train.max_steps, "b": 1200}
    a, b = (dst / "stages" / s.dirname for s in resolve_stages(new))
    assert stage_finished(a) and not stage_finished(b)
    assert (b / "checkpoints" / "last.ckpt").read_text() == "b"  # what the resume trains on from
    assert not (dst / "tb").exists() and stage_finished(src / "stages" / b.name)  # the source untouched
    # everything but the reopened stage's budget is the source's config
    old, changed = cfg.model_dump(mode="json"), new.model_dump(mode="json")
    old["stages"][1]["train"]["max_steps"] = changed["stages"][1]["train"]["max_steps"]
    assert old == changed


def test_unknown_stage_or_existing_destination_is_refused_before_copying(tool, tmp_path):
    src, _ = finished_run(tmp_path)
    with pytest.raises(SystemExit, match=r"no stage \['c'\].*'a', 'b'"):
        tool.main([str(src), str(tmp_path / "dst"), "1200", "c"])
    assert not (tmp_path / "dst").exists()
    with pytest.raises(SystemExit, match="exists"):
        tool.main([str(src), str(src), "1200", "a"])
