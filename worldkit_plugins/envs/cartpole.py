"""Cart-pole: a cart on a rail pushed by a force, carrying a free-swinging pole, seen side-on."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from worldkit_plugins.envs.base import VISUAL_XML, MujocoConfig, MujocoEnv, wrap_angle

XML = f"""
<mujoco model="cartpole">
  <option timestep="0.01"/>
  {VISUAL_XML}
  <worldbody>
    <camera name="main" pos="0 -3.4 0" xyaxes="1 0 0 0 0 1" fovy="45"/>
    <geom name="rail" type="box" size="1.1 0.03 0.04" rgba="0.6 0.6 0.6 1" contype="0" conaffinity="0"/>
    <body name="cart">
      <joint name="slider" type="slide" axis="1 0 0" range="-0.7 0.7" limited="true" damping="0.5"/>
      <geom name="cart" type="box" size="0.35 0.2 0.2" rgba="0.2 0.6 1 1" mass="1" contype="0" conaffinity="0"/>
      <body name="pole">
        <joint name="hinge" type="hinge" axis="0 1 0" damping="0.02"/>
        <geom name="pole" type="capsule" fromto="0 0 0 0 0 0.7" size="0.12" rgba="0.95 0.3 0.1 1" mass="0.2"
              contype="0" conaffinity="0"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="push" joint="slider" gear="{{gear}}" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


class CartPole(MujocoEnv):
    """A cart on a rail with a swinging pole; state: cart x, pole angle, their velocities."""

    class Config(MujocoConfig):
        max_force: float = Field(20.0, gt=0, description="force on the cart at action +-1 (N)")

    def model_xml(self) -> str:
        return XML.replace("{gear}", str(self.config.max_force))

    def init_episode(self, rng: np.random.Generator) -> None:
        self.data.qpos[:] = rng.uniform(-0.5, 0.5), rng.uniform(-np.pi, np.pi)  # pole angle 0 = upright
        self.data.qvel[:] = rng.uniform(-0.5, 0.5), rng.uniform(-1.0, 1.0)

    def state(self) -> np.ndarray:
        x, theta = self.data.qpos
        xdot, omega = self.data.qvel
        return np.array([x, wrap_angle(theta), xdot, omega], dtype=np.float32)  # (4,)

    @classmethod
    def observable(cls, config, states: np.ndarray) -> np.ndarray:
        """The pole angle as (sin, cos): a frame shows the pole, not which side of the +-pi wrap it is on.
        (..., 4) -> (..., 5)."""
        theta = states[..., 1:2]
        return np.concatenate([states[..., :1], np.sin(theta), np.cos(theta), states[..., 2:]], -1)
