"""Episode recording, the on-disk cache, splits, clip datasets and the seeded data module."""
from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest
import torch

import worldkit.data as D
from worldkit import registry

ENV = "pendulum"
SMALL = {"size": 16}  # small frames keep these tests fast


def make_cfg(cache_dir, **data) -> NS:
    """An experiment config with the attribute names of worldkit.schema."""
    env = NS(type=ENV, config=registry.get("env", ENV).Config(**SMALL))
    defaults = dict(train_episodes=6, val_episodes=3, test_episodes=2, episode_frames=12, cache_dir=str(cache_dir), workers=1)
    return NS(
        env=env,
        seed=3,
        data=NS(**{**defaults, **data}),
        train=NS(clip_frames=4, batch_size=4),
        eval=NS(horizons=[1, 3], context_frames=2),
    )


def load(cache_dir, split="train", episodes=4, frames=10, config=SMALL, workers=1):
    return D.load_split(ENV, config, split, episodes, frames, cache_dir, workers=workers, progress=False)


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------------
# Recording


def test_record_episode_pairs_each_frame_with_the_action_that_produced_it():
    env = registry.build("env", ENV, SMALL)
    ep = D.record_episode(env, seed=11, frames=10)
    assert ep.frames.shape == (10, 16, 16, 3) and ep.frames.dtype == np.uint8
    assert ep.actions.shape == (10, 1) and ep.actions.dtype == np.float32
    assert ep.states.shape == (10, 3) and ep.states.dtype == np.float32
    assert not ep.actions[0].any() and ep.actions[1:].any()
    # replaying actions[t] from frame t-1 reproduces frame t
    env.reset(11)
    np.testing.assert_array_equal(env.render(), ep.frames[0])
    for t in range(1, 10):
        env.step(ep.actions[t])
        np.testing.assert_array_equal(env.render(), ep.frames[t])
        np.testing.assert_array_equal(env.state(), ep.states[t])
    env.close()


def test_parallel_generation_matches_serial(monkeypatch):
    monkeypatch.setattr(D, "PARALLEL_MIN_FRAMES", 0)  # a pool even for this small job
    pools = []
    monkeypatch.setattr(D, "_pool_context", lambda real=D._pool_context: pools.append(1) or real())
    seeds = list(range(10))  # two chunks, so both workers get one
    config = D.resolve_config(ENV, SMALL)
    serial = D.generate(ENV, config, seeds, 6, workers=1, progress=False)
    parallel = D.generate(ENV, config, seeds, 6, workers=2, progress=False)
    assert len(pools) == 1  # only the second call started workers
    np.testing.assert_array_equal(serial.seeds, seeds)
    for name in ["frames", "actions", "states", "seeds"]:
        np.testing.assert_array_equal(getattr(serial, name), getattr(parallel, name))


# --------------------------------------------------------------------------------------------------
# Cache


def test_cache_is_reused(tmp_path, monkeypatch):
    first = load(tmp_path)
    (path,) = tmp_path.iterdir()
    mtime = path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached split")

    monkeypatch.setattr(D, "generate", fail)
    second = load(tmp_path)
    assert path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(first.frames, second.frames)
    np.testing.assert_array_equal(first.states, second.states)
    assert first.frames.shape == (4, 10, 16, 16, 3) and first.actions.shape == (4, 10, 1)


def test_crash_during_generation_leaves_no_file(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = D.record_episode

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # like Ctrl-C half way
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "record_episode", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        load(tmp_path)
    assert files(tmp_path) == []
    monkeypatch.setattr(D, "record_episode", real)
    assert len(load(tmp_path)) == 4
    assert len(files(tmp_path)) == 1


def test_crash_during_write_leaves_no_file(tmp_path, monkeypatch):
    def half_written(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(D.np, "savez_compressed", half_written)
    with pytest.raises(OSError, match="disk full"):
        load(tmp_path)
    assert files(tmp_path) == []  # neither the final file nor the temporary one


def test_a_damaged_cache_file_is_recorded_anew_with_a_one_line_notice(tmp_path, capsys):
    """Truncated (a killed copy, a full disk), altered in place, or not an npz: read with a notice and
    the episodes recorded again, never a traceback; an intact file is read without a word."""
    first = load(tmp_path)
    (path,) = tmp_path.iterdir()
    intact = path.read_bytes()
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    altered = {**arrays, "states": arrays["states"] + 1.0}  # a valid npz whose contents are not the ones checked

    def alter(f):
        with open(f, "wb") as out:
            np.savez_compressed(out, **altered)

    damages = {"truncated": lambda f: f.write_bytes(intact[:1000]), "altered": alter,
               "not an npz": lambda f: f.write_text("hello"), "empty": lambda f: f.write_bytes(b"")}
    for what, damage in damages.items():
        damage(path)
        again = load(tmp_path)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"warning: {path}: damaged cache file (") and "recording it anew" in err, what
        np.testing.assert_array_equal(again.states, first.states)
        assert path.read_bytes() != b"" and files(tmp_path) == [path.name], what
        load(tmp_path)
        assert capsys.readouterr().err == ""  # recorded whole: read quietly from then on


def test_ensure_split_verifies_what_it_lists(tmp_path, capsys):
    """``worldkit data`` lists a split as present only when it reads whole."""
    path = D.ensure_split(ENV, SMALL, "train", 4, 10, tmp_path, workers=1, progress=False)
    good = D._read(path)
    path.write_bytes(path.read_bytes()[:1000])
    assert D.ensure_split(ENV, SMALL, "train", 4, 10, tmp_path, workers=1, progress=False) == path
    assert "damaged cache file" in capsys.readouterr().err
    np.testing.assert_array_equal(D._read(path).frames, good.frames)


def test_a_cache_file_from_before_checksums_is_read_as_it_is(tmp_path, monkeypatch):
    first = load(tmp_path)
    (path,) = tmp_path.iterdir()
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "sha256"}
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    monkeypatch.setattr(D, "generate", lambda *a, **k: pytest.fail("recorded a readable file again"))
    np.testing.assert_array_equal(load(tmp_path).frames, first.frames)
    assert D.checksum(first) == D.checksum(D._read(path))  # the checksum is of the contents, not the file


def test_cache_key_follows_the_request(tmp_path):
    def path(config=SMALL, split="train", episodes=4, frames=10):
        return D.cache_path(ENV, config, split, episodes, frames, tmp_path)

    base = path()
    assert path({"size": 16, "frame_skip": 5}) == base  # defaults written out: same resolved config
    others = [path({"size": 24}), path({"size": 16, "frame_skip": 2}), path(split="val"), path(episodes=5),
              path(frames=11)]
    assert len({base, *others}) == 1 + len(others)
    assert D.cache_path("cartpole", SMALL, "train", 4, 10, tmp_path) != base


def test_format_version_changes_the_key(tmp_path, monkeypatch):
    before = D.cache_path(ENV, SMALL, "train", 4, 10, tmp_path)
    monkeypatch.setattr(D, "FORMAT_VERSION", D.FORMAT_VERSION + 1)
    assert D.cache_path(ENV, SMALL, "train", 4, 10, tmp_path) != before


def test_splits_are_disjoint_by_seed(tmp_path):
    sets = {split: load(tmp_path, split, episodes=3, frames=4) for split in ["train", "val", "test"]}
    seeds = {split: set(s.seeds.tolist()) for split, s in sets.items()}
    assert seeds["train"] == {0, 1, 2}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["val"] & seeds["test"])
    assert not (seeds["train"] & seeds["test"])
    assert not np.array_equal(sets["train"].frames[0], sets["val"].frames[0])
    with pytest.raises(ValueError, match="split"):
        D.split_seeds("holdout", 3)
    with pytest.raises(ValueError, match="episodes"):
        D.split_seeds("train", D.SPLIT_SIZE_LIMIT + 1)


def test_prepare_makes_all_splits_with_long_test_episodes(tmp_path):
    cfg = make_cfg(tmp_path)
    paths = D.prepare(cfg, progress=False)
    assert set(paths) == {"train", "val", "test"} and all(p.exists() for p in paths.values())
    test = load(tmp_path, "test", episodes=2, frames=2 + 3 * 4)
    assert test.frames.shape[:2] == (2, 14)  # context 2 + longest horizon 3 x clip 4
    assert D.prepare(cfg, progress=False) == paths


# --------------------------------------------------------------------------------------------------
# Datasets


def test_clip_dataset_items(tmp_path):
    episodes = load(tmp_path)  # 4 episodes x 10 frames
    ds = D.ClipDataset(episodes, clip_frames=4)
    assert len(ds) == 4 * 7
    item = ds[9]  # episode 1, start 2
    assert (item["episode"], item["start"]) == (1, 2)
    assert item["frames"].shape == (4, 3, 16, 16) and item["frames"].dtype == torch.float32
    assert item["frames"].min() >= -1 and item["frames"].max() <= 1 and item["frames"].std() > 0
    expected = torch.from_numpy(episodes.frames[1, 2:6]).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(item["frames"], expected)
    torch.testing.assert_close(item["actions"], torch.from_numpy(episodes.actions[1, 2:6]))
    assert item["actions"].shape == (4, 1) and item["states"].shape == (4, 3)

    val = D.ClipDataset(episodes, clip_frames=4, stride=4)  # all non-overlapping clips, in order
    assert len(val) == 4 * 2 and [val.locate(i) for i in range(3)] == [(0, 0), (0, 4), (1, 0)]
    with pytest.raises(ValueError, match="clip_frames"):
        D.ClipDataset(episodes, clip_frames=11)


@pytest.mark.slow
def test_ctrl_c_during_parallel_generation_prints_no_worker_tracebacks(tmp_path):
    """The terminal sends Ctrl-C to every process of the job: the workers leave it to the main process,
    which exits 130 without tracebacks and without a cache file for the interrupted split."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    env = dict(os.environ, OMP_NUM_THREADS="1", MUJOCO_GL="egl")
    main = Path(__file__).parents[1] / "experiments" / "self_forcing_pendulum.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldkit", "data", str(main), "--set", f"data.cache_dir={tmp_path}",
         "--set", "data.train_episodes=4000", "--set", "data.workers=2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )
    seen = b""
    deadline = time.time() + 120
    while not re.search(rb"\b[1-9]\d*/4000", seen) and time.time() < deadline:  # workers are mid-task
        seen += os.read(proc.stderr.fileno(), 4096)
    os.killpg(proc.pid, signal.SIGINT)
    rest = proc.stderr.read()
    proc.wait(timeout=60)
    err = (seen + rest).decode(errors="replace")
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert not list(tmp_path.glob("pendulum-train-*")) and not list(tmp_path.rglob("*.tmp*"))
