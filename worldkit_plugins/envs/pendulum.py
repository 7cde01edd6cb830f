"""Pendulum: one hinge driven by a torque motor, seen side-on."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from worldkit_plugins.envs.base import VISUAL_XML, MujocoConfig, MujocoEnv

XML = f"""
<mujoco model="pendulum">
  <option timestep="0.01"/>
  {VISUAL_XML}
  <worldbody>
    <camera name="main" pos="0 -2.9 0" xyaxes="1 0 0 0 0 1" fovy="45"/>
    <geom name="pivot" type="sphere" size="0.12" rgba="0.9 0.9 0.9 1" contype="0" conaffinity="0"/>
    <body name="pole">
      <joint name="hinge" type="hinge" axis="0 1 0" damping="0.05"/>
      <geom name="rod" type="capsule" fromto="0 0 0 0 0 -0.9" size="0.1" rgba="0.95 0.3 0.1 1" mass="0.2"
            contype="0" conaffinity="0"/>
      <geom name="bob" type="sphere" pos="0 0 -0.9" size="0.25" rgba="0.2 0.6 1 1" mass="1"
            contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="torque" joint="hinge" gear="{{gear}}" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>
"""


class Pendulum(MujocoEnv):
    """A torque-driven pendulum seen side-on; state: sin, cos of the angle and angular velocity."""

    class Config(MujocoConfig):
        max_torque: float = Field(6.0, gt=0, description="torque at action +-1 (N m)")

    def model_xml(self) -> str:
        return XML.replace("{gear}", str(self.config.max_torque))

    def init_episode(self, rng: np.random.Generator) -> None:
        self.data.qpos[0] = rng.uniform(-np.pi, np.pi)
        self.data.qvel[0] = rng.uniform(-2.0, 2.0)

    def state(self) -> np.ndarray:
        theta, omega = self.data.qpos[0], self.data.qvel[0]  # angle 0 = hanging down
        return np.array([np.sin(theta), np.cos(theta), omega], dtype=np.float32)  # (3,)
