"""Env plugins: the contract every registered env keeps, reproducibility, the memory room, MJCF loading."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from worldkit import registry
from worldkit.data import record_episode
from worldkit.interfaces import Environment

BUILTIN = ["pendulum", "cartpole", "reacher", "bouncing_balls", "memory"]


def _buildable() -> list[str]:
    """Every registered env whose Config has defaults for all fields (MJCF needs a file: tested below)."""
    out = []
    for name in registry.names("env"):
        fields = registry.get("env", name).Config.model_fields.values()
        if all(not f.is_required() for f in fields):
            out.append(name)
    return out


ENVS = _buildable()
_cache: dict[str, Environment] = {}


def env(name: str) -> Environment:
    """One instance per env for the whole module (a renderer costs a GL context)."""
    if name not in _cache:
        _cache[name] = registry.build("env", name, {})
    return _cache[name]


def test_builtin_envs_registered():
    assert set(BUILTIN) <= set(ENVS)


@pytest.mark.parametrize("name", ENVS)
def test_contract(name):
    e = env(name)
    assert e.__doc__ and e.Config.model_fields["size"].default == 32
    e.reset(0)
    frame = e.render()
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) >= 3, "a blank frame"
    state = e.state()
    assert state.shape == (e.state_dim,) and state.dtype == np.float32 and np.isfinite(state).all()

    actions = e.sample_actions(np.random.default_rng(0), 200)
    assert actions.shape == (200, e.action_dim) and actions.dtype == np.float32
    assert np.abs(actions).max() <= 1.0 and actions.std() > 0.05
    if e.smooth_actions:  # smooth: consecutive actions are strongly correlated
        a = actions - actions.mean(0)
        assert (a[1:] * a[:-1]).sum() / (a * a).sum() > 0.7

    ep = record_episode(e, seed=1, frames=24)
    moved = np.abs(np.diff(ep.frames.astype(np.int16), axis=0)).sum(axis=(1, 2, 3))  # (T-1,)
    assert (moved > 0).mean() > 0.8, "nothing moves between frames"
    assert np.abs(np.diff(ep.states, axis=0)).sum(axis=1).min() > 0


@pytest.mark.parametrize("name", ENVS)
def test_a_longer_episode_extends_a_shorter_one(name):
    """Episodes are prefixes of each other: test sets recorded for other horizons share their frames."""
    e = env(name)
    short, long = record_episode(e, seed=9, frames=10), record_episode(e, seed=9, frames=30)
    for x, y in [(short.frames, long.frames), (short.actions, long.actions), (short.states, long.states)]:
        np.testing.assert_array_equal(x, y[:10])


def test_builtin_cache_key_follows_the_model(monkeypatch, tmp_path):
    from worldkit.data import cache_path

    before = cache_path("pendulum", {"size": 16}, "test", 2, 10, tmp_path)
    cls = registry.get("env", "pendulum")
    original = cls.model_xml
    monkeypatch.setattr(cls, "model_xml", lambda self: original(self).replace("<worldbody>", "<worldbody><!-- edit -->"))
    assert cache_path("pendulum", {"size": 16}, "test", 2, 10, tmp_path) != before


@pytest.mark.parametrize("name", ENVS)
def test_same_seed_same_episode_other_seed_differs(name):
    e = env(name)
    a = record_episode(e, seed=5, frames=12)
    record_episode(e, seed=6, frames=12)  # state left behind by another episode must not leak
    b = record_episode(e, seed=5, frames=12)
    c = record_episode(e, seed=7, frames=12)
    for x, y in [(a.frames, b.frames), (a.actions, b.actions), (a.states, b.states)]:
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.states, c.states)


def test_fresh_instance_reproduces_episode():
    first = record_episode(env("reacher"), seed=3, frames=8)
    other = registry.build("env", "reacher", {})
    np.testing.assert_array_equal(record_episode(other, seed=3, frames=8).frames, first.frames)
    other.close()


def test_size_and_unknown_keys():
    small = registry.build("env", "pendulum", {"size": 16})
    assert small.render().shape == (16, 16, 3)
    small.close()
    with pytest.raises(ValueError, match="not_a_field"):
        registry.get("env", "pendulum").Config.model_validate({"not_a_field": 1})


def test_models_use_a_small_shadow_map():
    for name in ENVS:
        assert env(name).model.vis.quality.shadowsize <= 256


# --------------------------------------------------------------------------------------------------
# Memory room


def _colour_pixels(frames: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Per frame, how many pixels have the hue of the saturated colour ``rgb``, (T,)."""
    f = frames.astype(np.float32) / 255.0  # (T, H, W, 3)
    norm = np.linalg.norm(f, axis=-1) + 1e-6  # (T, H, W)
    cos = (f @ (rgb / np.linalg.norm(rgb))) / norm  # (T, H, W)
    return ((cos > 0.97) & (norm > 0.3)).sum(axis=(1, 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_memory_objects_leave_and_come_back(seed):
    e = env("memory")
    n = e.config.n_objects
    ep = record_episode(e, seed=seed, frames=120)
    yaw, angles = ep.states[:, 0], ep.states[:, 1 : 1 + n]  # (T,), (T, n)
    colours = ep.states[0, 1 + n :].reshape(n, 3)
    np.testing.assert_array_equal(angles, np.broadcast_to(angles[0], angles.shape))  # objects never move
    rel = np.abs((angles[:, 0] - yaw + np.pi) % (2 * np.pi) - np.pi)  # (T,) object 0 off the view axis
    in_view = rel < e.half_fov * 0.8
    out_of_view = rel > e.half_fov * 1.5
    assert in_view[0], "object 0 starts in view"
    gone = int(np.argmax(out_of_view))
    assert out_of_view.any() and in_view[gone:].any(), "object 0 leaves the view and comes back"
    back = gone + int(np.argmax(in_view[gone:]))
    # the same, seen in the pixels: object 0's colour is there, then absent, then there again
    pixels = _colour_pixels(ep.frames, colours[0])  # (T,)
    assert pixels[0] >= 4 and pixels[gone] == 0 and pixels[back] >= 4


@pytest.mark.parametrize("name, dim", [("cartpole", 1), ("reacher", 0)])
def test_free_angles_are_observed_across_the_wrap(name, dim):
    """A free joint's angle just below +pi and just above -pi looks the same in a frame: its observable
    form is continuous there (sin, cos), the other state entries pass through."""
    cls = registry.get("env", name)
    e = env(name)
    ep = record_episode(e, seed=3, frames=8)
    near = ep.states[:2].copy()
    near[0, dim], near[1, dim] = np.pi - 1e-4, -np.pi + 1e-4
    obs = cls.observable(e.config, near)
    assert obs.shape == (2, ep.states.shape[1] + 1)
    np.testing.assert_allclose(obs[0, dim:dim + 2], obs[1, dim:dim + 2], atol=1e-3)
    others = np.delete(near, dim, axis=1)
    np.testing.assert_allclose(np.delete(obs, [dim, dim + 1], axis=1), others)


def test_memory_observable_state_is_what_the_frame_shows():
    """Seen objects show their colour around the image column the observable state gives; unseen ones
    are zero; the yaw enters only up to the room's quarter-turn symmetry."""
    e = env("memory")
    n, W = e.config.n_objects, e.config.size
    ep = record_episode(e, seed=3, frames=80)
    obs = type(e).observable(e.config, ep.states)  # (T, 2 + 5n)
    assert obs.shape == (80, 2 + 5 * n)
    seen, across, rgb = obs[:, 2 : 2 + n], obs[:, 2 + n : 2 + 2 * n], obs[:, 2 + 2 * n :].reshape(80, n, 3)
    colours = ep.states[0, 1 + n :].reshape(n, 3)
    assert 0 < seen.mean() < 1  # objects come and go
    checked = 0
    for t in range(80):
        for i in range(n):
            if not seen[t, i]:
                assert across[t, i] == 0 and (rgb[t, i] == 0).all()
                continue
            np.testing.assert_allclose(rgb[t, i], colours[i])
            f = ep.frames[t].astype(np.float32)
            cos = (f @ colours[i]) / (np.linalg.norm(f, axis=-1) * np.linalg.norm(colours[i]) + 1e-6)
            cols = np.nonzero(((cos > 0.97) & (np.linalg.norm(f, axis=-1) > 0.3 * 255)).any(0))[0]
            if len(cols) >= 2 and abs(across[t, i]) < 0.8:  # clearly inside the view
                centre = (cols.mean() + 0.5) / W * 2 - 1
                assert abs(centre - across[t, i]) < 0.25, (t, i, centre, across[t, i])
                checked += 1
    assert checked >= 20
    turned = ep.states.copy()
    turned[:, 0] += np.pi / 2
    turned[:, 1 : 1 + n] += np.pi / 2  # the whole scene a quarter turn on: the frames would be the same
    np.testing.assert_allclose(type(e).observable(e.config, turned), obs, atol=1e-5)


def test_memory_colours_and_placement_vary_per_episode():
    e = env("memory")
    s0, s1 = record_episode(e, 0, 2).states[0], record_episode(e, 1, 2).states[0]
    n = e.config.n_objects
    assert not np.allclose(s0[1 + n :], s1[1 + n :])  # colours
    assert not np.allclose(s0[1 : 1 + n], s1[1 : 1 + n])  # angles


# --------------------------------------------------------------------------------------------------
# MJCF

MJCF = """
<mujoco>
  <worldbody>
    <light pos="0 0 3"/>
    <camera name="front" pos="0 -3 0.5" xyaxes="1 0 0 0 0 1"/>
    <body name="arm" pos="0 0 0.5">
      <joint name="hinge" type="hinge" axis="0 1 0"/>
      <geom type="capsule" fromto="0 0 0 0.8 0 0" size="0.1" rgba="1 0.3 0.1 1"/>
    </body>
  </worldbody>
  <actuator>
    <motor joint="hinge" ctrlrange="-2 2" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


@pytest.fixture()
def mjcf_file(tmp_path):
    path = tmp_path / "arm.xml"
    path.write_text(MJCF)
    return path


def test_mjcf_loads_renders_and_scales_actions(mjcf_file):
    e = registry.build("env", "mjcf", {"path": str(mjcf_file), "camera": "front", "size": 24})
    assert e.action_dim == 1 and e.state_dim == 2  # one motor; qpos + qvel of one hinge
    assert e.model.vis.quality.shadowsize <= 256  # capped even though the file does not set it
    ep = record_episode(e, seed=0, frames=10)
    assert ep.frames.shape == (10, 24, 24, 3) and ep.frames.dtype == np.uint8
    assert not np.array_equal(ep.frames[0], ep.frames[-1])
    np.testing.assert_array_equal(record_episode(e, seed=0, frames=10).frames, ep.frames)
    e.step(np.array([1.0]))
    assert e.data.ctrl[0] == pytest.approx(2.0)  # [-1, 1] -> ctrlrange
    e.step(np.array([-5.0]))
    assert e.data.ctrl[0] == pytest.approx(-2.0)  # clipped first
    e.step(np.array([0.0]))
    assert e.data.ctrl[0] == pytest.approx(0.0)
    e.close()


def test_mjcf_cache_key_follows_the_file_contents(mjcf_file, tmp_path):
    """Editing the model file (here a geom's colour) gives the episodes a new cache entry; the same
    contents keep theirs, and a built-in env's key does not depend on any file."""
    from worldkit.data import cache_path

    cfg = {"path": str(mjcf_file), "camera": "front", "size": 24}
    before = cache_path("mjcf", cfg, "train", 4, 10, tmp_path)
    assert cache_path("mjcf", cfg, "train", 4, 10, tmp_path) == before
    mjcf_file.write_text(MJCF.replace('rgba="1 0.3 0.1 1"', 'rgba="0.1 0.3 1 1"'))
    assert cache_path("mjcf", cfg, "train", 4, 10, tmp_path) != before
    mjcf_file.write_text(MJCF)
    assert cache_path("mjcf", cfg, "train", 4, 10, tmp_path) == before


def test_mjcf_cache_key_follows_included_files(tmp_path):
    from worldkit.data import cache_path

    (tmp_path / "parts").mkdir()  # MuJoCo resolves every include from the main file's folder
    (tmp_path / "arm.xml").write_text(MJCF.replace("<worldbody>", '<include file="parts/a.xml"/><worldbody>'))
    (tmp_path / "parts" / "a.xml").write_text('<mujoco><include file="parts/b.xml"/></mujoco>')
    (tmp_path / "parts" / "b.xml").write_text('<mujoco><visual><headlight ambient="0.3 0.3 0.3"/></visual></mujoco>')
    cfg = {"path": str(tmp_path / "arm.xml"), "camera": "front", "size": 24}
    before = cache_path("mjcf", cfg, "train", 4, 10, tmp_path)
    (tmp_path / "parts" / "b.xml").write_text('<mujoco><visual><headlight ambient="0.6 0.6 0.6"/></visual></mujoco>')
    assert cache_path("mjcf", cfg, "train", 4, 10, tmp_path) != before


def test_mjcf_missing_camera_names_the_choices(mjcf_file):
    with pytest.raises(ValueError, match=r"camera(.|\n)*'side'(.|\n)*choices: \['front'\]"):
        registry.build("env", "mjcf", {"path": str(mjcf_file), "camera": "side"})


def test_mjcf_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"path(.|\n)*no such MJCF file"):
        registry.build("env", "mjcf", {"path": str(tmp_path / "nope.xml"), "camera": "front"})


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton not installed")
def test_triton_after_an_env_renders_does_not_crash():
    """Triton imported after Mesa's EGL made a context segfaults; torch imports it late (Lightning,
    torch.compile), so an env that renders before training starts must not leave that order behind."""
    code = ("from worldkit_plugins.envs.pendulum import Pendulum\n"
            "env = Pendulum(Pendulum.Config(size=16)); env.reset(0); env.render()\n"
            "import triton, lightning\nprint('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
