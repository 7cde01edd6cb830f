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

    @classmethod
    def observable_step(cls, config: "Pendulum.Config", obs: np.ndarray, actions: np.ndarray):
        """MuJoCo's step from what a frame shows: the angle (sin, cos) and angular velocity set, the
        action's torque applied for one frame; the next (sin, cos, omega). (..., 3), (..., 1) -> (..., 3)."""
        from worldkit_plugins.envs.base import mujoco

        model = mujoco.MjModel.from_xml_string(XML.replace("{gear}", str(config.max_torque)))
        data = mujoco.MjData(model)
        flat_obs, flat_act = obs.reshape(-1, 3), actions.reshape(-1, actions.shape[-1])
        out = np.empty_like(flat_obs, dtype=np.float64)
        for i, ((s, c, omega), a) in enumerate(zip(flat_obs, flat_act)):
            mujoco.mj_resetData(model, data)
            data.qpos[0], data.qvel[0] = np.arctan2(s, c), omega
            data.ctrl[0] = float(np.clip(a[0], -1.0, 1.0))  # ctrlrange -1..1: the action as it is
            mujoco.mj_step(model, data, nstep=config.frame_skip)
            out[i] = np.sin(data.qpos[0]), np.cos(data.qpos[0]), data.qvel[0]
        return out.reshape(obs.shape), [0, 1, 2]
