"""worldkit.api: load weights with their environment, roll out under any plugins, recall, evaluate; the
quickstart runs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import worldkit.api as wk
from worldkit.errors import WorldkitError
from worldkit.checkpoints import load_model, save_weights
from worldkit.model import WorldModel

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(frame_size=16, action_dim=1, patch=4, width=32, layers=2, heads=2, block_patches=2, chunk_frames=2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder as `worldkit run` leaves it: config.yaml at the top, weights in a stage folder."""
    root = tmp_path_factory.mktemp("run")
    cfg = {"name": "tiny", "env": {"type": "pendulum", "size": 16},
           "data": {"cache_dir": str(root / "cache")},
           "model": {"patch": 4, "width": 32, "layers": 2, "heads": 2, "chunk_frames": 2, "sampler_steps": 2},
           "train": {"clip_frames": 6}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    model = WorldModel(**TINY_MODEL)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    (root / "stages" / "0-train").mkdir(parents=True)
    save_weights(model, root / "stages" / "0-train" / "model.pt")
    return root


def test_load_finds_the_environment_of_a_base_and_of_a_run(tiny_run):
    base = wk.load("base/revisit_room")
    assert (base.env, base.train_frames, base.sampler_steps) == ("revisit_room", 32, 4)
    run = wk.load(str(tiny_run / "stages" / "0-train" / "model.pt"))
    assert (run.env, run.env_config["size"], run.train_frames, run.sampler_steps) == ("pendulum", 16, 6, 2)
    assert wk.load("base/revisit_room", block_patches=1).model.geometry.blocks_per_frame == 16
    with pytest.raises(WorldkitError, match="weights: width change the weights; only block_patches"):
        load_model("base/revisit_room", width=8)


def test_load_without_a_recorded_environment_asks_for_one(tmp_path_factory):
    lone = tmp_path_factory.mktemp("lone") / "deep" / "er" / "w.pt"  # no config.yaml above it
    lone.parent.mkdir(parents=True)
    save_weights(WorldModel(**TINY_MODEL), lone)
    with pytest.raises(WorldkitError, match="pass env=NAME"):
        wk.load(str(lone))
    assert wk.load(str(lone), env="pendulum", env_config={"size": 16}).env == "pendulum"
    with pytest.raises(WorldkitError, match="weights: 'nope.pt' is neither a file"):
        wk.load("nope.pt")


def test_rollout_under_named_and_configured_plugins(tiny_run):
    world = wk.load(str(tiny_run / "stages" / "0-train" / "model.pt"))
    eps = world.episodes(2, frames=12, cache_dir=str(tiny_run / "cache"))
    assert eps.frames.shape == (2, 12, 3, 16, 16) and eps.actions.shape == (2, 12, 1)
    dense = world.rollout(eps, memory="dense", context_frames=2)
    window = world.rollout(eps, memory={"type": "sliding_window", "window_frames": 4}, context_frames=2)
    assert dense.frames.shape == window.frames.shape == (2, 10, 3, 16, 16)
    assert len(dense.ms_per_chunk) == len(dense.kv_bytes) == 5
    assert dense.kv_bytes[-1] > dense.kv_bytes[0] and window.kv_bytes[-1] == window.kv_bytes[1]  # grows / capped
    assert not torch.allclose(dense.frames, window.frames)  # the memory changes what is generated
    again = world.rollout(eps, memory="dense", context_frames=2)
    torch.testing.assert_close(again.frames, dense.frames)  # seeded
    forced = world.rollout(eps, memory="dense", context_frames=2, teacher_forced=True)
    torch.testing.assert_close(forced.frames[:, :2], dense.frames[:, :2])  # the first chunk reads the same cache
    assert not torch.allclose(forced.frames[:, 2:], dense.frames[:, 2:])
    assert dense.images().dtype.name == "uint8" and dense.images().shape == (2, 10, 16, 16, 3)
    with pytest.raises(WorldkitError, match="frames: 3 new frames"):
        world.rollout(eps, frames=3, context_frames=2)
    with pytest.raises(Exception, match="nope"):
        world.rollout(eps, memory="nope", context_frames=2)
    with pytest.raises(WorldkitError, match="no recall targets"):
        world.recall(eps, {"dense": dense})


def test_evaluate_scores_the_weights_under_an_experiments_plugins(tiny_run, tmp_path):
    exp = {"name": "e", "env": {"type": "pendulum", "size": 16},
           "data": {"train_episodes": 2, "val_episodes": 1, "test_episodes": 2, "episode_frames": 12,
                    "cache_dir": str(tiny_run / "cache")},
           "model": {"patch": 4, "width": 32, "layers": 2, "heads": 2, "chunk_frames": 2, "sampler_steps": 2},
           "train": {"max_steps": 0, "clip_frames": 4},
           "eval": {"horizons": [1, 2], "episodes": 2, "context_frames": 2, "probe_steps": 5},
           "stages": [{"name": "window", "memory": {"type": "sliding_window", "window_frames": 4}}]}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(exp))
    world = wk.load(str(tiny_run / "stages" / "0-train" / "model.pt"))
    rows = world.evaluate(tmp_path / "e.yaml", tmp_path / "out")
    assert [r["memory"] for r in rows] == ["sliding_window"]
    assert (tmp_path / "out" / "stages" / "0-window" / "eval.json").exists()
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())  # what it ran, as worldkit eval saves it
    assert saved["train"]["max_steps"] == 0 and saved["model"]["init"].endswith("model.pt")
    (tmp_path / "g.yaml").write_text(yaml.safe_dump({**exp, "grid": {"memory.type": ["dense", "sink"]}}))
    with pytest.raises(WorldkitError, match="a grid experiment"):
        world.evaluate(tmp_path / "g.yaml", tmp_path / "out2")


def test_quickstart_runs_and_draws(tmp_path):
    env = {**os.environ, "QUICKSTART_OUT": str(tmp_path), "MPLBACKEND": "Agg", "WORLDKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "persistent_block" in proc.stdout and "ms/chunk" in proc.stdout and "gap bucket" in proc.stdout
    assert (tmp_path / "frames.png").stat().st_size > 5000 and (tmp_path / "recall.png").stat().st_size > 5000


def test_recall_scores_a_rollout_shorter_than_the_episodes(tmp_path):
    """The recall targets follow the frames rolled out, not the episodes' length: 42-frame episodes,
    10 context frames and 8 new ones score returns within those 18 frames only."""
    world = wk.load("base/revisit_room")
    eps = world.episodes(2, frames=42, cache_dir=str(tmp_path))
    short = world.rollout(eps, memory="dense", context_frames=10, frames=8)
    rec = world.recall(eps, {"dense": short})
    assert {"dense", "truth", "persistence", "oracle"} <= set(rec["stats"]["colour"])
    longer = world.recall(eps, {"dense": world.rollout(eps, memory="dense", context_frames=10)})
    assert sum(rec["returns"]) < sum(longer["returns"])  # fewer frames, fewer returns scored


def test_load_for_another_env_keeps_only_the_settings_that_env_has(tmp_path):
    """Weights recorded with one env, played in another: the recorded settings the other env also has
    (the frame size, ...) carry over, the first env's own (the pendulum's torque) do not."""
    recorded = wk.load("base/pendulum").env_config
    world = wk.load("base/pendulum", env="revisit_room")
    assert "max_torque" in recorded and "max_torque" not in world.env_config
    assert world.env_config["size"] == recorded["size"]
    eps = world.episodes(1, frames=2, cache_dir=str(tmp_path))
    assert tuple(eps.frames.shape[-2:]) == tuple(world.model.geometry.frame_hw)

