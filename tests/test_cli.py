"""The ``worldkit`` command: exit codes, error lines that name file, field and value, run folders that
are never reused, the plugin table. The experiment runner and data generation are faked."""
from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
from contextlib import ExitStack
from pathlib import Path

import pytest
import torch
import yaml

from worldkit import cli, config, registry
from worldkit.interfaces import KINDS

from tests.test_config import FAKES  # the same stand-in plugins

ROOT = Path(__file__).resolve().parents[1]


BASE = {"name": "toy", "env": {"type": "toy_env"}}


@pytest.fixture(autouse=True)
def fakes():
    with ExitStack() as stack:
        for (kind, name), cls in FAKES.items():
            stack.enter_context(registry.register(kind, name, cls, replace=True))
        yield


@pytest.fixture
def experiment(monkeypatch):
    """A fake ``worldkit.experiment`` whose ``run`` records its calls (and can be told to raise)."""
    module = types.ModuleType("worldkit.experiment")
    module.calls = []
    module.raises = None

    def run(cfg, run_dir, **kw):
        module.calls.append((cfg, Path(run_dir), kw))
        if module.raises is not None:
            raise module.raises

    module.run = run
    monkeypatch.setitem(sys.modules, "worldkit.experiment", module)
    return module


def write(tmp_path: Path, data, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def call(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------------
# validate: a table of bad experiments


STAGE = {"name": "a", "trainer": {"type": "toy_trainer"}}


@pytest.mark.parametrize(
    "data, path, shown",
    [
        ({**BASE, "memory": {"type": "slidng"}}, "memory.type", "'slidng'"),
        ({**BASE, "memory": {"type": "toy_widow"}}, "memory.type", "did you mean 'toy_window'?"),
        ({**BASE, "model": {"width": "wide"}}, "model.width", "'wide'"),
        ({**BASE, "memory": {"type": "toy_window", "window_frames": -2}}, "memory.window_frames", "-2"),
        ({**BASE, "memory": {"type": "toy_window", "size": 3}}, "memory.size", "allowed: type, window_frames"),
        ({**BASE, "train": {"schedule": "linear"}}, "train.schedule", "'linear'"),
        ({**BASE, "train": {"precison": "bf16"}}, "train.precison", "did you mean 'precision'?"),
        ({**BASE, "model": {"heads": 3}}, "model.heads", "(got 3)"),
        ({**BASE, "eval": {"horizons": [1, "x"]}}, "eval.horizons[1]", "'x'"),
        ({**BASE, "env": {"type": "toy_env", "colour": "red"}}, "env.colour", "'red'"),
        ({**BASE, "env": {"type": "toy_env", "size": 30}}, "model.patch", "frame size 30"),
        ({**BASE, "data": {"episode_frames": 4}}, "data.episode_frames", "(got 4)"),
        ({**BASE, "stages": [STAGE, {"name": "b", "trainer": {"type": "self_forcng"}}]}, "stages[1].trainer.type",
         "'self_forcng'"),
        ({**BASE, "stages": [{**STAGE, "train": {"lr": "fast"}}]}, "stages[0].train.lr", "'fast'"),
        ({**BASE, "stages": [{"name": "a/b"}]}, "stages[0].name", "'a/b'"),
        ({"env": {"type": "toy_env"}}, "name", "missing"),
        ({**BASE, "nmae": "typo"}, "nmae", "'typo'"),
    ],
)
def test_validate_reports_file_field_and_value(tmp_path, capsys, data, path, shown):
    file = write(tmp_path, data)
    code, out, err = call(capsys, "validate", file)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.startswith(f"error: {file}: {path}: ")]
    assert lines and shown in lines[0], err
    assert "Traceback" not in err


def test_validate_prints_the_resolved_config(tmp_path, capsys):
    file = write(tmp_path, {**BASE, "memory": {"type": "toy_window"}})
    code, out, err = call(capsys, "validate", file, "--set", "model.width=64", "--set", "memory.window_frames=2")
    assert (code, err) == (0, "")
    resolved = yaml.safe_load(out)
    assert resolved["model"]["width"] == 64 and resolved["memory"] == {"type": "toy_window", "window_frames": 2}
    assert resolved["train"]["clip_frames"] == 16 and resolved["selector"] == {"type": "all"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("name: toy\nenv: {type: toy_env\n", ": line 3, column 1: invalid YAML"),
        ("name: toy\n  env: 1\n", ": line 2, column 6: invalid YAML"),
        ("name: toy\nname: again\n", ": line 2, column 1: invalid YAML: duplicate key 'name'"),
        ("- 1\n", "expected a mapping of experiment fields"),
    ],
)
def test_unreadable_yaml_names_the_line(tmp_path, capsys, text, words):
    file = write(tmp_path, text)
    code, _, err = call(capsys, "validate", file)
    assert code == 2 and err.startswith(f"error: {file}") and words in err and "Traceback" not in err


def test_missing_file_and_bad_set(tmp_path, capsys):
    code, _, err = call(capsys, "validate", tmp_path / "nope.yaml")
    assert code == 2 and err == f"error: {tmp_path / 'nope.yaml'}: no such file\n"
    file = write(tmp_path, BASE)
    code, _, err = call(capsys, "validate", file, "--set", "model.widht=3", "--set", "train.lr=slow")
    assert code == 2
    assert "error: --set: model.widht: no key 'widht' in model (did you mean 'width'?); keys available there:" in err
    code, _, err = call(capsys, "validate", file, "--set", "train.lr=slow")
    assert code == 2 and err.startswith("error: --set train.lr=slow: train.lr: ") and "'slow'" in err


def test_usage_errors_exit_2(capsys):
    assert call(capsys, "bogus")[0] == 2
    assert call(capsys, "plugins", "--kind", "memroy")[0] == 2
    assert call(capsys)[0] == 2


# --------------------------------------------------------------------------------------------------
# run


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def test_run_writes_the_resolved_config_into_a_new_folder(tmp_path, capsys, experiment):
    file = write(tmp_path, BASE)
    out_root = tmp_path / "runs"
    code, _, err = call(capsys, "run", file, "--set", f"out_root={out_root}", "--set", "train.max_steps=7")
    assert code == 0, err
    (run_dir,) = run_dirs(out_root)
    assert re.fullmatch(r"toy-\d{8}-\d{6}", run_dir.name)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    saved = config.load(run_dir / "config.yaml")
    (cfg, called_dir, kw) = experiment.calls[0]
    assert called_dir == run_dir and kw == {} and saved == cfg and cfg.train.max_steps == 7
    assert (run_dir / "config.yaml").read_text() == config.to_yaml(cfg)


def test_runs_never_reuse_a_folder(tmp_path, capsys, experiment, monkeypatch):
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20240102-030405")
    file = write(tmp_path, {**BASE, "out_root": str(tmp_path / "runs")})
    assert call(capsys, "run", file)[0] == 0
    first = tmp_path / "runs" / "toy-20240102-030405"
    (first / "results.csv").write_text("earlier results\n")
    assert call(capsys, "run", file)[0] == 0
    assert call(capsys, "run", file)[0] == 0
    assert [p.name for p in run_dirs(tmp_path / "runs")] == [
        "toy-20240102-030405", "toy-20240102-030405-1", "toy-20240102-030405-2"]
    assert (first / "results.csv").read_text() == "earlier results\n"
    assert [call_[1].name for call_ in experiment.calls] == [p.name for p in run_dirs(tmp_path / "runs")]


def test_run_out_refuses_a_folder_with_results(tmp_path, capsys, experiment):
    file = write(tmp_path, BASE)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.csv").write_text("keep me\n")
    code, _, err = call(capsys, "run", file, "--out", taken)
    assert code == 2 and f"error: {taken}: already exists and is not empty" in err
    assert (taken / "results.csv").read_text() == "keep me\n" and not (taken / "config.yaml").exists()
    assert experiment.calls == []
    empty = tmp_path / "empty"
    empty.mkdir()
    assert call(capsys, "run", file, "--out", empty)[0] == 0 and (empty / "config.yaml").exists()
    fresh = tmp_path / "a" / "b"
    assert call(capsys, "run", file, "--out", fresh)[0] == 0 and (fresh / "config.yaml").exists()
    assert len(experiment.calls) == 2


def test_invalid_run_creates_no_folder(tmp_path, capsys, experiment):
    file = write(tmp_path, {**BASE, "out_root": str(tmp_path / "runs"), "model": {"width": "x"}})
    code, _, err = call(capsys, "run", file)
    assert code == 2 and "model.width" in err
    assert run_dirs(tmp_path / "runs") == [] and experiment.calls == []


def test_resume_uses_the_saved_config(tmp_path, capsys, experiment):
    file = write(tmp_path, BASE)
    run_dir = tmp_path / "run"
    assert call(capsys, "run", file, "--out", run_dir)[0] == 0
    assert call(capsys, "run", "--resume", run_dir)[0] == 0
    (cfg0, _, _), (cfg1, dir1, kw1) = experiment.calls
    assert cfg1 == cfg0 and dir1 == run_dir and kw1 == {"resume": True}
    code, _, err = call(capsys, "run", file, "--resume", run_dir)
    assert code == 2 and "--resume uses the run folder's own config.yaml" in err
    # a new budget on resume is applied and recorded in the run folder
    assert call(capsys, "run", "--resume", run_dir, "--set", "train.max_steps=7")[0] == 0
    assert experiment.calls[-1][0].train.max_steps == 7
    assert config.load(run_dir / "config.yaml").train.max_steps == 7
    # anything but a budget would relabel what ran: refused, the folder's config untouched
    n = len(experiment.calls)
    for bad in ("memory.type=sink", "model.width=64", "train.lr=0.5"):
        code, _, err = call(capsys, "run", "--resume", run_dir, "--set", bad)
        assert code == 2 and "may change only a budget" in err, bad
    # a finished stage keeps the budget it ran with
    stage_dir = run_dir / "stages" / "0-train"
    stage_dir.mkdir(parents=True)
    for f in ("model.pt", "eval.json", "summary.json"):
        (stage_dir / f).write_text("{}")
    code, _, err = call(capsys, "run", "--resume", run_dir, "--set", "train.max_steps=9")
    assert code == 2 and "stage train has finished (train.max_steps: 7 -> 9)" in err
    assert len(experiment.calls) == n and config.load(run_dir / "config.yaml").train.max_steps == 7
    code, _, err = call(capsys, "run", "--resume", tmp_path / "nowhere")
    assert code == 2 and "config.yaml: no such file" in err
    assert call(capsys, "run")[0] == 2


def test_resume_refuses_a_budget_below_the_steps_already_trained(tmp_path, capsys, experiment):
    run_dir = tmp_path / "run"
    assert call(capsys, "run", write(tmp_path, {**BASE, "train": {"max_steps": 200}}), "--out", run_dir)[0] == 0
    ckpt = run_dir / "stages" / "0-train" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"global_step": 37}, ckpt)
    code, _, err = call(capsys, "run", "--resume", run_dir, "--set", "train.max_steps=5")
    assert code == 2 and "train.max_steps=5 is below the 37 steps its checkpoint has already trained" in err
    assert config.load(run_dir / "config.yaml").train.max_steps == 200
    assert call(capsys, "run", "--resume", run_dir, "--set", "train.max_steps=37")[0] == 0  # stop where it is


def test_run_refuses_an_accelerator_this_machine_lacks(tmp_path, capsys, experiment, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out_root = tmp_path / "runs"
    file = write(tmp_path, {**BASE, "out_root": str(out_root), "train": {"accelerator": "gpu"}})
    code, _, err = call(capsys, "run", file)
    assert code == 2 and "train.accelerator='gpu', but this machine has no GPU device" in err
    assert run_dirs(out_root) == [] and experiment.calls == []
    code, _, err = call(capsys, "validate", file, "--set", "train.accelerator=foo")
    assert code == 2 and "train.accelerator" in err and "'cpu'" in err  # the choices
    # Lightning's 'gpu' is also Apple's MPS
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert call(capsys, "run", file, "--out", tmp_path / "mac")[0] == 0
    # a resumed run on a machine without the device: refused before its config.yaml is touched
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    saved = (tmp_path / "mac" / "config.yaml").read_text()
    code, _, err = call(capsys, "run", "--resume", tmp_path / "mac", "--set", "train.max_steps=5")
    assert code == 2 and "resume it on a machine that has one" in err
    assert (tmp_path / "mac" / "config.yaml").read_text() == saved


def test_unused_top_level_plugin_is_a_warning(tmp_path, capsys, experiment):
    raw = {**BASE, "trainer": {"type": "toy_trainer"}, "stages": [{"name": "a", "trainer": {"type": "toy_trainer"}}]}
    code, _, err = call(capsys, "validate", write(tmp_path, raw))
    assert code == 0 and "warning:" in err and "trainer: unused, every stage sets its own trainer" in err


def test_a_bad_set_does_not_hide_the_files_own_errors(tmp_path, capsys):
    file = write(tmp_path, {**BASE, "model": {"widht": 256}})
    code, _, err = call(capsys, "validate", file, "--set", "train.lrr=1", "--set", "train.lr=0.5")
    assert code == 2
    assert "error: --set: train.lrr: no key 'lrr'" in err and f"error: {file}: model.widht: unknown key" in err
    code, _, err = call(capsys, "validate", write(tmp_path, BASE, "ok.yaml"), "--set", "train.lrr=1")
    assert code == 2 and err.count("error:") == 1  # a valid file: only the bad --set


def test_problems_a_set_causes_in_the_stages_are_blamed_on_it(tmp_path, capsys):
    """A stage inherits train.clip_frames from the top level: the --set that broke it is named there too;
    a stage's own value is the file's."""
    file = write(tmp_path, {**BASE, "stages": [STAGE, {**STAGE, "name": "b", "train": {"clip_frames": 9}}]})
    code, _, err = call(capsys, "validate", file, "--set", "train.clip_frames=15")
    lines = err.strip().splitlines()
    assert code == 2 and "error: --set train.clip_frames=15: stages[0].train.clip_frames:" in err
    assert f"error: {file}: stages[1].train.clip_frames:" in err  # b sets its own 9
    assert all(ln.startswith("error: --set") for ln in lines if "stages[1]" not in ln)


def test_a_rejected_set_leaves_the_file_as_it_was_and_blame_goes_to_the_exact_set(tmp_path, capsys):
    file = write(tmp_path, BASE)
    code, _, err = call(capsys, "validate", file, "--set", "env.size.x=1")
    assert code == 2 and err.count("error:") == 1 and "error: --set: env.size.x:" in err  # no half-made env.size
    code, _, err = call(capsys, "validate", file, "--set", "memory.type=toy_window", "--set", "memory.window_frames=-2")
    assert code == 2 and "error: --set memory.window_frames=-2: memory.window_frames:" in err
    bogus = write(tmp_path, {**BASE, "memory": {"type": "toy_window", "bogus": 1}}, "bogus.yaml")
    code, _, err = call(capsys, "validate", bogus, "--set", "memory.type=toy_window")  # the type did not change
    assert code == 2 and f"error: {bogus}: memory.bogus:" in err


def test_ctrl_c_exits_130(tmp_path, capsys, experiment):
    experiment.raises = KeyboardInterrupt()
    code, _, err = call(capsys, "run", write(tmp_path, BASE), "--out", tmp_path / "r")
    assert code == 130 and "interrupted" in err and "Traceback" not in err


def test_an_interrupt_anywhere_in_a_run_says_how_to_resume(tmp_path, monkeypatch):
    """Not only in training: Ctrl-C during evaluation or the state probe also names the resume command."""
    import worldkit.experiment as E

    def stop(*args):
        raise KeyboardInterrupt()

    monkeypatch.setattr(E, "_run_stages", stop)
    with pytest.raises(KeyboardInterrupt, match=f"resume with: worldkit run --resume {tmp_path}"):
        E.run(None, tmp_path)


def test_data_calls_prepare_with_the_validated_config(tmp_path, capsys, monkeypatch):
    module = types.ModuleType("worldkit.data")
    module.prepare = lambda cfg: prepared.append(cfg) or {"train": tmp_path / "t.npz"}
    prepared: list = []
    monkeypatch.setitem(sys.modules, "worldkit.data", module)
    code, out, _ = call(capsys, "data", write(tmp_path, BASE), "--set", "data.train_episodes=3")
    assert code == 0 and prepared[0].data.train_episodes == 3
    assert out == f"train: {tmp_path / 't.npz'}\n"  # where the episodes are, also when they were cached


# --------------------------------------------------------------------------------------------------
# plugins


def test_plugins_lists_every_kind_with_origin_and_description(capsys):
    code, out, _ = call(capsys, "plugins")
    assert code == 0
    rows = [re.split(r"\s{2,}", line) for line in out.splitlines()]
    assert rows[0] == ["KIND", "NAME", "ORIGIN", "DESCRIPTION"]
    assert ["memory", "toy_window", registry.REGISTERED, "A toy window."] in rows
    assert {r[0] for r in rows[1:]} == set(KINDS)
    from worldkit import DISTRIBUTION

    installed = {r[1]: r for r in rows[1:] if r[2].startswith(f"{DISTRIBUTION} ")}
    assert {"persistent_block", "local_window", "pbsa", "self_forcing", "pendulum"} <= set(installed)
    code, out, _ = call(capsys, "plugins", "--kind", "trainer")
    assert code == 0 and {line.split()[0] for line in out.splitlines()[1:]} == {"trainer"}


def test_plugins_shows_a_broken_plugin_without_hiding_the_others(tmp_path, capsys, monkeypatch):
    info = tmp_path / "shaky_plugins-0.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shaky-plugins\nVersion: 0.2\n")
    (info / "entry_points.txt").write_text("[worldkit.selector]\nshaky = wk_cli_shaky:Shaky\n")
    (tmp_path / "wk_cli_shaky.py").write_text("import numpy\nraise RuntimeError('CUDA 99 required')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry.clear_cache()
    try:
        code, out, _ = call(capsys, "plugins", "--kind", "selector")
    finally:
        registry.clear_cache()
    assert code == 0
    (line,) = [line for line in out.splitlines() if " shaky " in line]
    assert "shaky-plugins 0.2" in line and "BROKEN: failed to import: RuntimeError: CUDA 99 required" in line
    assert any(" all " in line for line in out.splitlines())


# --------------------------------------------------------------------------------------------------
# the installed console script, and the README's commands


def test_console_script_exits_2_without_traceback(tmp_path):
    file = write(tmp_path, {"name": "toy"})
    proc = subprocess.run(["worldkit", "validate", str(file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {file}: env: required field is missing; env choices: ")
    assert "pendulum" in proc.stderr and "Traceback" not in proc.stderr


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = [line.strip() for line in readme.splitlines() if "python -m pytest" in line]
    assert commands, "README.md gives no test command"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[0] in [line.strip() for line in ci]
    assert "set -euo pipefail" in ci


def test_the_distribution_has_a_name_of_its_own():
    """PyPI's 'worldkit' is another project: this one is distributed as DISTRIBUTION, plugins depend on that,
    and the command answers under both names."""
    from importlib.metadata import distribution

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    from worldkit import DISTRIBUTION

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION != "worldkit"
    assert set(project["scripts"]) == {"worldkit", DISTRIBUTION}
    plugin = tomllib.loads((root / "examples" / "worldkit-example-plugin" / "pyproject.toml").read_text())["project"]
    assert DISTRIBUTION in plugin["dependencies"] and "worldkit" not in plugin["dependencies"]
    assert distribution(DISTRIBUTION).metadata["Name"] == DISTRIBUTION  # what is installed is this project
    assert f"`{DISTRIBUTION}`" in (root / "README.md").read_text()
