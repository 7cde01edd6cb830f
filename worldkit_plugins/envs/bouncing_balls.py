"""Bouncing balls: a few balls in a 2-D box seen from above; the action tilts gravity."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from worldkit_plugins.envs.base import VISUAL_XML, MujocoConfig, MujocoEnv

COLOURS = ["1 0.2 0.2 1", "0.2 0.9 0.2 1", "0.25 0.5 1 1", "1 0.9 0.1 1", "1 0.3 1 1", "0.2 1 1 1"]
HALF = 1.0  # half-size of the box's inside
WALL = 0.1  # wall half-thickness


def _ball_xml(i: int, radius: float) -> str:
    return f"""
    <body name="ball{i}" pos="0 0 {radius}">
      <joint name="ball{i}_x" type="slide" axis="1 0 0" damping="0.15"/>
      <joint name="ball{i}_y" type="slide" axis="0 1 0" damping="0.15"/>
      <geom name="ball{i}" type="sphere" size="{radius}" rgba="{COLOURS[i]}" mass="1"/>
    </body>"""


def _walls_xml() -> str:
    out, s = [], HALF + WALL
    for name, pos, size in [
        ("east", f"{s} 0", f"{WALL} {s + WALL}"),
        ("west", f"{-s} 0", f"{WALL} {s + WALL}"),
        ("north", f"0 {s}", f"{s + WALL} {WALL}"),
        ("south", f"0 {-s}", f"{s + WALL} {WALL}"),
    ]:
        out.append(f'<geom name="{name}" type="box" pos="{pos} 0.2" size="{size} 0.2" rgba="0.8 0.8 0.8 1"/>')
    return "\n    ".join(out)


def make_xml(n_balls: int, radius: float) -> str:
    """MJCF of the box with ``n_balls`` frictionless, elastic balls (gravity lies in the floor plane)."""
    balls = "".join(_ball_xml(i, radius) for i in range(n_balls))
    return f"""
<mujoco model="bouncing_balls">
  <option timestep="0.005" gravity="0 0 0"/>
  {VISUAL_XML}
  <default>
    <geom condim="1" solref="-20000 -0.5" solimp="0.9 0.95 0.001" friction="0 0 0"/>
  </default>
  <worldbody>
    <camera name="main" pos="0 0 3.2" xyaxes="1 0 0 0 1 0" fovy="45"/>
    <geom name="floor" type="plane" size="{HALF} {HALF} 0.1" rgba="0.1 0.1 0.1 1" contype="0" conaffinity="0"/>
    {_walls_xml()}
    {balls}
  </worldbody>
</mujoco>
"""


class BouncingBalls(MujocoEnv):
    """Balls bouncing in a box seen from above, actions tilt gravity; state: ball xy positions, velocities."""

    class Config(MujocoConfig):
        frame_skip: int = Field(10, ge=1, description="physics steps per frame")
        n_balls: int = Field(3, ge=1, le=len(COLOURS), description="number of balls")
        radius: float = Field(0.22, gt=0.02, le=0.4, description="ball radius")
        max_speed: float = Field(2.5, gt=0, description="largest initial ball speed")
        max_tilt: float = Field(3.0, ge=0, description="in-plane gravity at action +-1 (m/s^2)")

    def model_xml(self) -> str:
        return make_xml(self.config.n_balls, self.config.radius)

    @property
    def action_dim(self) -> int:
        return 2  # gravity x, y

    def init_episode(self, rng: np.random.Generator) -> None:
        n, r = self.config.n_balls, self.config.radius
        pos = np.zeros((0, 2))  # (k, 2) placed so far, without overlaps
        while len(pos) < n:
            p = rng.uniform(-HALF + r, HALF - r, size=2)
            if np.all(np.linalg.norm(pos - p, axis=1) > 2.2 * r):
                pos = np.vstack([pos, p])
        speed = rng.uniform(0.4, 1.0, size=(n, 1)) * self.config.max_speed
        heading = rng.uniform(-np.pi, np.pi, size=n)
        vel = speed * np.stack([np.cos(heading), np.sin(heading)], axis=1)  # (n, 2)
        self.data.qpos[:] = pos.reshape(-1)  # joints are ball0_x, ball0_y, ball1_x, ...
        self.data.qvel[:] = vel.reshape(-1)
        self.model.opt.gravity[:] = 0.0

    def step(self, action: np.ndarray) -> None:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)  # (2,)
        self.model.opt.gravity[:] = a[0] * self.config.max_tilt, a[1] * self.config.max_tilt, 0.0
        super().step(np.zeros(0))

    def state(self) -> np.ndarray:
        n = self.config.n_balls
        pos = self.data.qpos.reshape(n, 2)  # (n, 2)
        vel = self.data.qvel.reshape(n, 2)  # (n, 2)
        return np.concatenate([pos.reshape(-1), vel.reshape(-1)]).astype(np.float32)  # (4n,)
