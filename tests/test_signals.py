"""Stopping on SIGTERM as on Ctrl-C: the checkpoint of the last completed optimizer step, the resume
command said, exit 143; resumed, the run reaches the weights of an uninterrupted one. Sparse Forcing
(persistent_block + local_window + pbsa) trained by self forcing, end to end from the CLI."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from worldkit import cli, signals
from worldkit import config as wk_config
from worldkit import experiment
from worldkit.experiment import RunData, fit_stage, resolve_stages

from tests.test_training import tiny_raw

ROOT = Path(__file__).resolve().parents[1]


def sparse_forcing_raw(cache, **train):
    """Sparse Forcing at a tiny size: a frame leaves the 4-frame window into the persistent memory
    during every training rollout, the selector keeps half the local blocks, PBSA reads them."""
    raw = tiny_raw(cache, max_steps=40, val_every=20, batch_size=2, ema=0.9, **train)
    raw.update(memory={"type": "persistent_block", "sink_frames": 1, "window_frames": 4, "persistent_frames": 1},
               selector={"type": "local_window", "top_k": 0.5, "impl": "torch"},
               attention={"type": "pbsa", "impl": "torch"},
               trainer={"type": "self_forcing", "context_frames": 2})
    raw["eval"] = {"horizons": [1], "episodes": 1, "context_frames": 2, "probe_steps": 0, "strips": 1}
    return raw


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "stages" / "0-train" / "model.pt", weights_only=False)["state_dict"]


def last_step(run_dir: Path) -> int:
    return torch.load(run_dir / "stages" / "0-train" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=0, atol=1e-6, msg=n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sparse_yaml(cache, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "sparse.yaml"
    path.write_text(yaml.safe_dump(sparse_forcing_raw(cache)))
    return path


@pytest.fixture(scope="module")
def uninterrupted(sparse_yaml, tmp_path_factory):
    """The Sparse Forcing run trained without a stop, from the CLI."""
    run = tmp_path_factory.mktemp("full") / "run"
    assert cli.main(["run", str(sparse_yaml), "--out", str(run)]) == 0
    return run


def test_sparse_forcing_trains_by_self_forcing_from_the_cli(uninterrupted):
    """The three plugins went through training and evaluation: the persistent memory was filled in the
    rollouts, and the stage has its weights, checkpoint and scores."""
    stage = uninterrupted / "stages" / "0-train"
    assert {"model.pt", "eval.json", "summary.json"} <= {p.name for p in stage.iterdir()}
    assert last_step(uninterrupted) == 40
    cfg = wk_config.load(uninterrupted / "config.yaml")
    assert (cfg.memory.type, cfg.selector.type, cfg.attention.type, cfg.trainer.type) == (
        "persistent_block", "local_window", "pbsa", "self_forcing")
    d = RunData(cfg)
    module = experiment.make_module(cfg, resolve_stages(cfg)[0], d)
    batch = next(iter(torch.utils.data.DataLoader(d.clips("train", 6), batch_size=2)))
    module.loss(batch)
    assert module.memory.n_persistent == 4  # one frame of 4 blocks left the window and was kept


def read_until(stream, pattern: bytes, timeout: float) -> bytes:
    """Bytes of ``stream`` (a pipe) up to the first match of ``pattern`` (or its end, or the timeout)."""
    seen, deadline = b"", time.time() + timeout
    while not re.search(pattern, seen) and time.time() < deadline:
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            break
        seen += chunk
    return seen


def test_sigterm_to_a_real_run_saves_the_last_step_and_resume_reaches_the_same_weights(
        sparse_yaml, uninterrupted, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "worldkit", "run", str(sparse_yaml), "--out", str(run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        seen = read_until(proc.stdout, rb"\b([3-9]|1\d)/40\b", timeout=120)  # a few steps in
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = err.decode(errors="replace")
    assert proc.returncode == 143, (seen + out)[-2000:].decode(errors="replace") + err[-3000:]
    assert f"worldkit: terminated (SIGTERM) (stopped; resume with: worldkit run --resume {run})" in err
    assert "Traceback" not in err
    for noise in ("litlogger", "LeafSpec", "Detected KeyboardInterrupt", "Received SIGTERM", "weights_only"):
        assert noise not in err  # worldkit.quiet: the run's own lines only
    reached = last_step(run)
    assert 3 <= reached < 40
    assert not (run / "stages" / "0-train" / "model.pt").exists()
    assert cli.main(["run", "--resume", str(run)]) == 0
    assert last_step(run) == 40
    assert_same_weights(weights(run), weights(uninterrupted))


# --------------------------------------------------------------------------------------------------
# Where in a step the signal lands


class SignalAt(L.Callback):
    """Sends SIGTERM to this process at one hook of the ``step``-th optimizer step (1-based)."""

    def __init__(self, hook: str, step: int):
        self.hook, self.step = hook, step

    def _kill(self, trainer, hook: str) -> None:
        before = hook in ("on_train_batch_start", "on_before_optimizer_step")  # global_step not yet counted
        if hook == self.hook and trainer.global_step == self.step - before:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_start(self, trainer, *args) -> None:  # before the forward pass
        self._kill(trainer, "on_train_batch_start")

    def on_before_optimizer_step(self, trainer, *args) -> None:  # gradients made, not yet applied
        self._kill(trainer, "on_before_optimizer_step")

    def on_train_batch_end(self, trainer, *args) -> None:  # applied, the EMA not yet updated
        self._kill(trainer, "on_train_batch_end")

    def on_validation_batch_start(self, trainer, *args) -> None:  # validating after the step
        self._kill(trainer, "on_validation_batch_start")


@pytest.fixture(scope="module")
def ema_run(cache, tmp_path_factory):
    cfg = wk_config.validate(tiny_raw(cache, max_steps=6, val_every=3, ema=0.5))
    d = RunData(cfg)
    full = fit_stage(cfg, resolve_stages(cfg)[0], d, tmp_path_factory.mktemp("full"), init=None, resume=False)
    return cfg, d, full.state_dict()


@pytest.mark.parametrize("hook, step, saved", [
    ("on_train_batch_start", 3, 2),  # mid-step: at once, the step before is the checkpoint
    ("on_before_optimizer_step", 3, 2),
    ("on_train_batch_end", 3, 3),  # while the step is applied: held until it is whole (EMA included)
    ("on_validation_batch_start", 3, 3),
])
def test_a_stop_during_a_step_saves_the_last_completed_step(hook, step, saved, ema_run, tmp_path, monkeypatch):
    cfg, d, full = ema_run
    stage = resolve_stages(cfg)[0]
    orig = experiment.make_trainer
    monkeypatch.setattr(experiment, "make_trainer",
                        lambda tr, sd, cbs, lg, val_batches=None: orig(tr, sd, [*cbs, SignalAt(hook, step)], lg, val_batches))
    with signals.handled():
        with pytest.raises(signals.Terminated, match=f"resume with: worldkit run --resume {tmp_path}"):
            fit_stage(cfg, stage, d, tmp_path, init=None, resume=False)
    assert signals.received() == signal.SIGTERM and signals.exit_code() == 143
    ckpt = torch.load(tmp_path / "stages" / stage.dirname / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == saved
    monkeypatch.undo()
    resumed = fit_stage(cfg, stage, d, tmp_path, init=None, resume=True)
    assert_same_weights(resumed.state_dict(), full)  # the EMA copy too


# --------------------------------------------------------------------------------------------------
# Outside training: data generation, grids


def test_sigterm_while_recording_episodes_exits_143_without_a_cache_file(cache, tmp_path, monkeypatch, capsys):
    from worldkit import data as wk_data

    raw = tiny_raw(tmp_path / "fresh")
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    real, calls = wk_data.record_episode, []

    def record(env, seed, frames):
        calls.append(seed)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(env, seed, frames)

    monkeypatch.setattr(wk_data, "record_episode", record)
    assert cli.main(["data", str(path)]) == 143
    err = capsys.readouterr().err
    assert "worldkit: terminated (SIGTERM)" in err and len(calls) == 3
    assert not list((tmp_path / "fresh").glob("*.npz")) and not list((tmp_path / "fresh").glob("*.tmp"))
    # Ctrl-C still exits 130
    calls.clear()
    monkeypatch.setattr(wk_data, "record_episode", lambda *a: calls.append(1) or os.kill(os.getpid(), signal.SIGINT))
    assert cli.main(["data", str(path)]) == 130 and "worldkit: interrupted" in capsys.readouterr().err


def test_sigterm_stops_a_grid_with_its_resume_command(tmp_path, capsys, monkeypatch):
    ran = []

    def run(cfg, run_dir, **kw):
        ran.append(Path(run_dir).name)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(experiment, "run", run)
    raw = {"name": "g", "env": {"type": "pendulum", "size": 16}, "model": {"patch": 4},
           "grid": {"memory.type": ["dense", "sliding_window"]}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = cli.main(["run", str(path), "--out", str(tmp_path / "grid")])
    err = capsys.readouterr().err
    assert code == 143 and len(ran) == 1
    assert f"stopped in cell {ran[0]}; finished cells are kept; resume with: worldkit run --resume {tmp_path / 'grid'}" in err


def test_without_the_handlers_lightnings_own_sigterm_stop_is_saved_too(ema_run, tmp_path, monkeypatch):
    """Outside ``handled()`` (worldkit used as a library) the handlers are as they were, and Lightning
    answers SIGTERM by ending the step and raising SIGTERMException: saved and resumable as well."""
    before = signal.getsignal(signal.SIGTERM)
    with signals.handled():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
    cfg, d, full = ema_run
    stage = resolve_stages(cfg)[0]
    orig = experiment.make_trainer
    monkeypatch.setattr(experiment, "make_trainer", lambda tr, sd, cbs, lg, val_batches=None: orig(
        tr, sd, [*cbs, SignalAt("on_train_batch_start", 2)], lg, val_batches))
    with pytest.raises(KeyboardInterrupt, match="resume with"):
        fit_stage(cfg, stage, d, tmp_path, init=None, resume=False)
    assert last_step_of(tmp_path, stage) == 2  # Lightning finishes the step it is in
    monkeypatch.undo()
    assert_same_weights(fit_stage(cfg, stage, d, tmp_path, init=None, resume=True).state_dict(), full)


def last_step_of(run_dir: Path, stage) -> int:
    return torch.load(run_dir / "stages" / stage.dirname / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


def test_a_damaged_checkpoint_is_resumed_from_the_one_before_or_the_stage_starts_over(ema_run, tmp_path, monkeypatch,
                                                                                      capfd):
    """A last.ckpt cut short (a kill during the save, a full disk) is said in one line; the stage resumes
    from best.ckpt (the last validation) and trains the steps after it again, to the same weights; with no
    readable checkpoint it starts over, to the same weights too."""
    cfg, d, full = ema_run
    stage = resolve_stages(cfg)[0]
    ckpts = tmp_path / "stages" / stage.dirname / "checkpoints"
    orig = experiment.make_trainer
    monkeypatch.setattr(experiment, "make_trainer", lambda tr, sd, cbs, lg, val_batches=None: orig(
        tr, sd, [*cbs, SignalAt("on_train_batch_start", 5)], lg, val_batches))
    with signals.handled(), pytest.raises(signals.Terminated):
        fit_stage(cfg, stage, d, tmp_path, init=None, resume=False)
    monkeypatch.undo()
    assert last_step(tmp_path) == 4 and torch.load(ckpts / "best.ckpt", weights_only=False)["global_step"] == 3
    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:5000])
    capfd.readouterr()
    assert_same_weights(fit_stage(cfg, stage, d, tmp_path, init=None, resume=True).state_dict(), full)
    err = capfd.readouterr().err
    assert f"warning: {ckpts / 'last.ckpt'}: damaged checkpoint (BadZipFile" in err
    assert f"resuming from {ckpts / 'best.ckpt'} instead" in err and "Traceback" not in err
    for name in ("last.ckpt", "best.ckpt"):
        (ckpts / name).write_bytes(b"")
    assert_same_weights(fit_stage(cfg, stage, d, tmp_path, init=None, resume=True).state_dict(), full)
    assert "no other to resume from; the stage starts over" in capfd.readouterr().err
    from worldkit.stages import checkpoint_step

    assert checkpoint_step(ckpts / "missing.ckpt") is None
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 not a whole zip")
    assert checkpoint_step(ckpts / "last.ckpt") is None  # a budget check on resume reads it as no checkpoint
