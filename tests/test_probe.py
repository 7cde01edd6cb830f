"""State probe and skill score on synthetic cases where the answer is known."""
import numpy as np
import torch

from worldkit import metrics
from worldkit.frames import frames_to_tensor
from worldkit.probe import state_error, train_probe


def square_world(n=32, t=10, size=12, seed=0):
    """A bright square bouncing on a dark background; the state is its (row, col) and velocity."""
    rng = np.random.default_rng(seed)
    frames = np.zeros((n, t, size, size, 3), np.uint8)
    states = np.zeros((n, t, 4), np.float32)
    for e in range(n):
        p = rng.integers(0, size - 3, 2)
        v = rng.choice([-1, 1], 2)
        for k in range(t):
            v = np.where((p + v < 0) | (p + v > size - 3), -v, v)
            p = p + v
            frames[e, k, p[0] : p[0] + 3, p[1] : p[1] + 3] = 255
            states[e, k] = [p[0], p[1], v[0], v[1]]
    return frames, states


def test_probe_reads_the_state_and_punishes_a_wrong_frame():
    frames, states = square_world()
    probe = train_probe(frames, states, steps=300, batch=64)
    test_f, test_s = square_world(n=6, seed=1)
    x = frames_to_tensor(test_f)
    s = torch.from_numpy(test_s)
    truth = state_error(probe, x[:, 1:], s[:, 1:], x[:, 0])
    frozen = state_error(probe, x[:, :1].expand(-1, x.shape[1] - 1, -1, -1, -1), s[:, 1:], x[:, 0])
    assert truth.mean() < 0.5  # in standard deviations
    assert frozen[:, 4:].mean() > 2 * truth[:, 4:].mean()  # a frozen square is read as the wrong state


def test_skill_of_perfect_and_persistence_forecasts():
    frames, _ = square_world(n=4)
    x = frames_to_tensor(frames)
    ctx, target = x[:, :2], x[:, 2:]
    persistence = metrics.persistence_forecast(ctx, target.shape[1])
    ref = metrics.mse(persistence, target).mean(1)
    assert torch.allclose(metrics.skill(metrics.mse(target, target).mean(1), ref), torch.ones(4))
    assert torch.allclose(metrics.skill(ref, ref), torch.zeros(4))
    assert (metrics.skill(metrics.mse(-target, target).mean(1), ref) < 0).all()  # worse than doing nothing


def test_runs_score_the_state_a_frame_shows_and_key_the_probe_by_it(tmp_path):
    """The memory room's probe reads its observable state (objects out of view are not in it); the probe
    cache is keyed by the states it reads, so a changed mapping never reuses a stale probe."""
    from pathlib import Path

    from worldkit import config as wk_config
    from worldkit.experiment import RunData
    from worldkit.probe import probe_path

    cfg = wk_config.validate({
        "name": "m", "env": {"type": "memory", "size": 16},
        "data": {"train_episodes": 2, "val_episodes": 1, "test_episodes": 1, "episode_frames": 18,
                 "cache_dir": str(tmp_path), "workers": 1},
        "train": {"clip_frames": 16}, "eval": {"horizons": [1], "episodes": 1},
    })
    d = RunData(cfg)
    n = 3
    assert d.sets["test"].states.shape[-1] == 1 + 4 * n and d.seen_states["test"].shape[-1] == 2 + 5 * n
    states = d.seen_states["train"]
    a, b = probe_path(Path("x.npz"), 10, 0, states), probe_path(Path("x.npz"), 10, 0, states + 1)
    assert a != b and a == probe_path(Path("x.npz"), 10, 0, states.copy())


def test_a_damaged_probe_file_is_trained_anew(tmp_path, capsys):
    from worldkit.probe import cached_probe, probe_path

    frames, states = square_world(n=4, t=4)
    data = tmp_path / "episodes.npz"
    first = cached_probe(data, frames, states, steps=2)
    path = probe_path(data, 2, 0, states)
    path.write_bytes(path.read_bytes()[:100])
    again = cached_probe(data, frames, states, steps=2)
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {path}: damaged probe file (") and err.count("\n") == 1
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)  # the same seed trains the same probe
    cached_probe(data, frames, states, steps=2)
    assert capsys.readouterr().err == ""
