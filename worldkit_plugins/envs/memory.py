"""Memory room: a camera in the middle of a room turns away from random objects and later back."""
from __future__ import annotations

import colorsys

import numpy as np
from pydantic import Field

from worldkit_plugins.envs.base import VISUAL_XML, MujocoConfig, MujocoEnv, ou_actions, wrap_angle

ROOM = 2.5  # half-size of the room
SHAPES = ["box", "sphere", "cylinder", "box", "sphere", "cylinder"]


def make_xml(n_objects: int, fovy: float, size: float) -> str:
    """MJCF of a plain room with a yawing camera at its centre and ``n_objects`` placeholder objects."""
    objects = "\n    ".join(
        f'<geom name="object{i}" type="{SHAPES[i]}" size="{size} {size} {size}" pos="{ROOM - 1} 0 {size}" '
        f'rgba="1 1 1 1"/>'
        for i in range(n_objects)
    )
    walls = "\n    ".join(
        f'<geom name="wall{k}" type="box" pos="{x} {y} 1" size="{sx} {sy} 1" rgba="0.45 0.45 0.45 1"/>'
        for k, (x, y, sx, sy) in enumerate(
            [(ROOM, 0, 0.05, ROOM), (-ROOM, 0, 0.05, ROOM), (0, ROOM, ROOM, 0.05), (0, -ROOM, ROOM, 0.05)]
        )
    )
    return f"""
<mujoco model="memory_room">
  {VISUAL_XML}
  <worldbody>
    <light pos="0 0 2.5" dir="0 0 -1" diffuse="0.5 0.5 0.5" castshadow="false"/>
    <geom name="floor" type="plane" size="{ROOM} {ROOM} 0.1" rgba="0.2 0.2 0.2 1"/>
    {walls}
    {objects}
    <body name="head" mocap="true" pos="0 0 {size}">
      <camera name="main" pos="0 0 0" xyaxes="0 -1 0 0 0 1" fovy="{fovy}"/>
    </body>
  </worldbody>
</mujoco>
"""


class MemoryRoom(MujocoEnv):
    """A camera yawing in a room with random objects; state: camera yaw, object angles and colours."""

    class Config(MujocoConfig):
        n_objects: int = Field(3, ge=1, le=len(SHAPES), description="objects placed in the initial view")
        object_size: float = Field(0.2, gt=0.05, le=0.5, description="object half-size")
        fovy: float = Field(60.0, gt=10, lt=120, description="camera field of view (degrees)")
        max_yaw_rate: float = Field(10.0, gt=0, description="yaw speed at action +-1 (rad/s)")
        sweep_amplitude: float = Field(1.6, gt=0, description="amplitude of the policy's yaw sweep (rad)")
        sweep_period: float = Field(40.0, gt=2, description="mean period of the policy's sweep (frames)")
        policy_std: float = Field(0.15, ge=0, description="std of the policy's yaw jitter (rad)")

    def model_xml(self) -> str:
        c = self.config
        return make_xml(c.n_objects, c.fovy, c.object_size)

    @property
    def action_dim(self) -> int:
        return 1  # yaw velocity

    @property
    def half_fov(self) -> float:
        """Half the horizontal field of view in radians (frames are square)."""
        return np.deg2rad(self.config.fovy) / 2

    def init_episode(self, rng: np.random.Generator) -> None:
        c = self.config
        self.yaw = float(rng.uniform(-np.pi, np.pi))
        # objects spread over 85% of the initial view, one near the middle of each angular slot
        width = 1.7 * self.half_fov / c.n_objects
        centres = (np.arange(c.n_objects) + 0.5) * width - 0.85 * self.half_fov  # (n,)
        offsets = centres + rng.uniform(-0.25, 0.25, size=c.n_objects) * width  # (n,)
        self.object_angles = wrap_angle(self.yaw + rng.permutation(offsets))  # (n,)
        radius = rng.uniform(1.4, 2.0, size=c.n_objects)  # (n,)
        hues = (rng.uniform() + np.arange(c.n_objects) / c.n_objects + rng.uniform(-0.1, 0.1, c.n_objects)) % 1
        self.object_rgb = np.array([colorsys.hsv_to_rgb(h, 1.0, 1.0) for h in hues])  # (n, 3)
        for i in range(c.n_objects):
            gid = self.model.geom(f"object{i}").id
            a = self.object_angles[i]
            self.model.geom_pos[gid, :2] = radius[i] * np.cos(a), radius[i] * np.sin(a)
            self.model.geom_rgba[gid, :3] = self.object_rgb[i]
        self._place_camera()

    def _place_camera(self) -> None:
        self.data.mocap_quat[0] = np.cos(self.yaw / 2), 0.0, 0.0, np.sin(self.yaw / 2)

    def step(self, action: np.ndarray) -> None:
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        self.yaw = float(wrap_angle(self.yaw + a * self.config.max_yaw_rate * self.frame_dt))
        self._place_camera()
        self.forward()  # the room has no dynamics: only the camera moves

    def sample_actions(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """A slow sinusoidal sweep of random phase and period plus jitter, as yaw velocities."""
        c = self.config
        period = c.sweep_period * rng.uniform(0.75, 1.25)
        t = np.arange(steps + 1)  # (steps+1,)
        offset = c.sweep_amplitude * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))  # (steps+1,)
        offset = offset + ou_actions(rng, steps + 1, 1, c.policy_tau, c.policy_std)[:, 0]  # yaw, rad
        rate = np.diff(offset) / (c.max_yaw_rate * self.frame_dt)  # (steps,) in units of the max rate
        return np.clip(rate, -1.0, 1.0).astype(np.float32)[:, None]  # (steps, 1)

    def visible(self) -> np.ndarray:
        """Whether each object's centre is inside the horizontal field of view, (n,) bool."""
        return np.abs(wrap_angle(self.object_angles - self.yaw)) < self.half_fov

    def state(self) -> np.ndarray:
        parts = [[self.yaw], self.object_angles, self.object_rgb.reshape(-1)]
        return np.concatenate(parts).astype(np.float32)  # (1 + n + 3n,)

    @classmethod
    def observable(cls, config: "MemoryRoom.Config", states: np.ndarray) -> np.ndarray:
        """What a frame shows: the yaw up to the room's quarter-turn symmetry (cos 4 yaw, sin 4 yaw) and,
        per object, whether it is in view, where across the view (-1 left edge .. 1 right edge) and its
        colour; position and colour are 0 while out of view. (..., 1 + 4n) -> (..., 2 + 5n)."""
        n = config.n_objects
        yaw, angles = states[..., :1], states[..., 1 : 1 + n]  # (..., 1), (..., n)
        rgb = states[..., 1 + n :].reshape(*states.shape[:-1], n, 3)  # (..., n, 3)
        half_fov = np.deg2rad(config.fovy) / 2
        rel = wrap_angle(angles - yaw)  # (..., n) bearing from the view's centre, counter-clockwise
        seen = (np.abs(rel) < half_fov).astype(np.float32)  # (..., n)
        across = -np.tan(rel) / np.tan(half_fov) * seen  # (..., n) image x of the centre
        parts = [np.cos(4 * yaw), np.sin(4 * yaw), seen, across, (seen[..., None] * rgb).reshape(*states.shape[:-1], 3 * n)]
        return np.concatenate(parts, axis=-1).astype(np.float32)
