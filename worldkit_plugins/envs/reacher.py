"""Reacher: a two-link planar arm driven by two motors, with a target placed at random, seen from above."""
from __future__ import annotations

import numpy as np
from pydantic import Field

from worldkit_plugins.envs.base import VISUAL_XML, MujocoConfig, MujocoEnv, wrap_angle

XML = f"""
<mujoco model="reacher">
  <option timestep="0.01" gravity="0 0 0"/>
  {VISUAL_XML}
  <worldbody>
    <camera name="main" pos="0 0 2.4" xyaxes="1 0 0 0 1 0" fovy="45"/>
    <geom name="floor" type="plane" size="1.2 1.2 0.1" pos="0 0 -0.1" rgba="0.15 0.15 0.15 1"
          contype="0" conaffinity="0"/>
    <geom name="base" type="cylinder" size="0.13 0.05" rgba="0.9 0.9 0.9 1" contype="0" conaffinity="0"/>
    <body name="upper">
      <joint name="shoulder" type="hinge" axis="0 0 1" damping="0.3"/>
      <geom name="upper" type="capsule" fromto="0 0 0 0.5 0 0" size="0.1" rgba="0.2 0.6 1 1" mass="0.5"
            contype="0" conaffinity="0"/>
      <body name="lower" pos="0.5 0 0">
        <joint name="elbow" type="hinge" axis="0 0 1" range="-2.8 2.8" limited="true" damping="0.3"/>
        <geom name="lower" type="capsule" fromto="0 0 0 0.4 0 0" size="0.09" rgba="0.3 0.9 0.3 1" mass="0.3"
              contype="0" conaffinity="0"/>
        <geom name="hand" type="sphere" pos="0.4 0 0" size="0.11" rgba="1 1 1 1" mass="0.05"
              contype="0" conaffinity="0"/>
      </body>
    </body>
    <body name="target" mocap="true">
      <geom name="target" type="sphere" size="0.14" rgba="1 0.2 0.2 1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="shoulder" joint="shoulder" gear="{{gear}}" ctrlrange="-1 1" ctrllimited="true"/>
    <motor name="elbow" joint="elbow" gear="{{gear}}" ctrlrange="-1 1" ctrllimited="true"/>
  </actuator>
</mujoco>
"""
REACH = 0.9  # sum of the link lengths


class Reacher(MujocoEnv):
    """A two-link arm and a random target seen from above; state: joint angles, velocities, target xy."""

    class Config(MujocoConfig):
        max_torque: float = Field(1.0, gt=0, description="torque at action +-1 (N m)")

    def model_xml(self) -> str:
        return XML.replace("{gear}", str(self.config.max_torque))

    def init_episode(self, rng: np.random.Generator) -> None:
        self.data.qpos[:] = rng.uniform(-np.pi, np.pi), rng.uniform(-2.5, 2.5)
        self.data.qvel[:] = rng.uniform(-1.0, 1.0, size=2)
        radius, angle = rng.uniform(0.3, REACH), rng.uniform(-np.pi, np.pi)
        self.data.mocap_pos[0] = radius * np.cos(angle), radius * np.sin(angle), 0.0

    def state(self) -> np.ndarray:
        shoulder, elbow = self.data.qpos
        target = self.data.mocap_pos[0, :2]
        return np.array([wrap_angle(shoulder), elbow, *self.data.qvel, *target], dtype=np.float32)  # (6,)

    @classmethod
    def observable(cls, config, states: np.ndarray) -> np.ndarray:
        """The shoulder angle as (sin, cos): the arm turns freely, so a frame shows it only up to the
        +-pi wrap. (..., 6) -> (..., 7)."""
        shoulder = states[..., :1]
        return np.concatenate([np.sin(shoulder), np.cos(shoulder), states[..., 1:]], -1)
