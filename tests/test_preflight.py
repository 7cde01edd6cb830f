"""``worldkit validate`` refuses what ``worldkit run`` would refuse once started, with the same line, and a
run refuses it before it makes a folder: checkpoints (missing, not a checkpoint, another model), a
trainer that cannot start from its weights, folders that cannot be made, MJCF cameras, plugin checks."""
from pathlib import Path

import pytest
import torch
import yaml

from worldkit import cli
from worldkit.checkpoints import save_weights
from worldkit.model import WorldModel

from tests.test_envs import MJCF

TINY = {
    "name": "tiny", "env": {"type": "pendulum", "size": 16},
    "model": {"patch": 4, "width": 32, "layers": 2, "heads": 2},
    "train": {"max_steps": 2, "clip_frames": 6},
    "data": {"episode_frames": 8},
}
HPARAMS = dict(frame_size=16, action_dim=1, patch=4, width=32, layers=2, heads=2)
DMD = {"type": "self_forcing", "dmd": {"critic_ratio": 2}}


def files(tmp_path: Path) -> dict:
    """Inputs of the table: a text file, a checkpoint of this model, and one of another action space."""
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    save_weights(WorldModel(**HPARAMS), tmp_path / "good.pt")
    save_weights(WorldModel(**{**HPARAMS, "action_dim": 2}), tmp_path / "two_actions.pt")
    (tmp_path / "cam.xml").write_text(MJCF)
    (tmp_path / "broken.xml").write_text("<mujoco><worldbody")
    return {"{notes}": str(tmp_path / "notes.txt"), "{good}": str(tmp_path / "good.pt"),
            "{two}": str(tmp_path / "two_actions.pt"), "{xml}": str(tmp_path / "cam.xml"),
            "{broken}": str(tmp_path / "broken.xml")}


def fill(value, names: dict):
    if isinstance(value, str):
        for k, v in names.items():
            value = value.replace(k, v)
        return value
    if isinstance(value, dict):
        return {k: fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, names) for v in value]
    return value


CASES = [
    ({"model": {**TINY["model"], "init": "base/does_not_exist"}},
     "model.init: no shipped checkpoint 'base/does_not_exist'; shipped: base/"),
    ({"model": {**TINY["model"], "init": "{notes}"}}, "model.init: {notes} is not a readable checkpoint"),
    ({"model": {**TINY["model"], "init": "base/pendulum"}},
     "was trained with other model settings: frame_size=32 (config has 16), patch=8 (config has 4)"),
    ({"model": {**TINY["model"], "init": "{two}"}},
     "model.init: {two} was trained with other model settings: action_dim=2 (config has 1)"),
    ({"trainer": DMD}, "trainer.dmd.teacher is not set and the stage starts from random weights"),
    ({"trainer": {**DMD, "dmd": {"teacher": "base/nope"}}}, "trainer.dmd.teacher: no shipped checkpoint 'base/nope'"),
    ({"stages": [{"name": "a", "trainer": {"type": "diffusion_forcing"}},
                 {"name": "b", "trainer": {**DMD, "dmd": {"teacher": "{notes}"}}}]},
     "stages[1].trainer.dmd.teacher: {notes} is not a readable checkpoint"),
    ({"stages": [{"name": "a", "trainer": DMD}]}, "stage a: trainer.dmd.teacher is not set"),
    ({"trainer": {**DMD, "dmd": {"teacher": "{good}"}}, "train": {**TINY["train"], "strategy": "fsdp"}},
     "trainer.dmd: trains a critic beside the model, which train.strategy=fsdp does not shard"),
    ({"data": {**TINY["data"], "cache_dir": "{notes}"}}, "data.cache_dir: '{notes}' is a file, not a folder"),
    ({"data": {**TINY["data"], "cache_dir": "{notes}/cache"}}, "data.cache_dir: '{notes}/cache' cannot be made: {notes} is a file"),
    ({"eval": {"reference": "nope"}}, "eval.reference: not a stage or variant of this experiment; choices: train"),
    ({"env": {"type": "mjcf", "path": "{xml}", "camera": "back", "size": 16}},
     "env: camera: no camera named 'back' in {xml}; choices: ['front']"),
    ({"env": {"type": "mjcf", "path": "{broken}", "camera": "c", "size": 16}},
     "env: XML parse error"),  # MuJoCo's message of several lines, on one
    ({"memory": {"type": "persistent_block", "window_frames": 1}, "trainer": {"type": "self_forcing"}},
     "memory.window_frames: must be at least the chunk length"),
    ({"train": {**TINY["train"], "max_steps": 0}}, "train.max_steps: 0 evaluates the starting weights, but there are none"),
    ({"train": {**TINY["train"], "max_steps": 0}, "compare": [{"name": "w", "memory": {"type": "sliding_window"}}]},
     "stage w: train.max_steps: 0 evaluates the starting weights, but there are none"),
]


@pytest.mark.parametrize("change, words", CASES, ids=[w.split(":")[0] for _, w in CASES])
def test_validate_refuses_what_run_would_and_run_refuses_it_before_making_a_folder(change, words, tmp_path, capsys):
    names = files(tmp_path)
    raw = fill({**TINY, "data": {**TINY["data"], "cache_dir": str(tmp_path / "cache")}, **change}, names)
    words = fill(words, names)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    for command in (["validate", path], ["run", path, "--out", tmp_path / "run"]):
        code = cli.main([str(a) for a in command])
        out, err = capsys.readouterr()
        assert code == 2 and out == "", (command[0], err)
        lines = err.splitlines()
        assert any(line.startswith(f"error: {path}") and words in line for line in lines), (command[0], err)
        assert all(line.startswith(("error: ", "warning: ")) for line in lines), err  # one line per problem
        assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_valid_start_passes(tmp_path, capsys):
    names = files(tmp_path)
    raw = fill({**TINY, "model": {**TINY["model"], "init": "{good}"},
                "stages": [{"name": "a", "trainer": {**DMD, "dmd": {"teacher": "{good}"}}}]}, names)
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = cli.main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and yaml.safe_load(out)["model"]["init"] == names["{good}"]


def test_out_root_below_a_file_is_refused_unless_out_is_given(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({**TINY, "out_root": str(blocker / "runs"),
                                    "data": {**TINY["data"], "cache_dir": str(tmp_path / "cache")}}))
    assert cli.main(["validate", str(path)]) == 2
    assert f"out_root: '{blocker / 'runs'}' cannot be made: {blocker} is a file" in capsys.readouterr().err
    from worldkit import experiment

    monkeypatch.setattr(experiment, "run", lambda cfg, run_dir, **kw: None)
    assert cli.main(["run", str(path), "--out", str(tmp_path / "elsewhere")]) == 0


def test_validate_says_a_missing_accelerator_and_a_grid_is_checked_cell_by_cell(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "accelerator": "gpu"},
                                    "data": {**TINY["data"], "cache_dir": str(tmp_path / "cache")}}))
    code = cli.main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 0 and f"warning: {path}: train.accelerator='gpu', but this machine has no GPU" in err
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({**TINY, "grid": {"model.init": [None, "base/nope"]},
                                    "data": {**TINY["data"], "cache_dir": str(tmp_path / "cache")}}))
    code = cli.main(["validate", str(grid)])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {grid} cell init=base_nope: model.init: no shipped checkpoint 'base/nope'" in err
    assert cli.main(["run", str(grid), "--out", str(tmp_path / "g")]) == 2 and not (tmp_path / "g").exists()
