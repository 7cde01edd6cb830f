"""Shared base of the MuJoCo environments: model loading, offscreen rendering, actions, random policy.

A concrete env supplies its MJCF as a string (``model_xml``), draws its initial state in
``init_episode(rng)`` and reads its low-dimensional state in ``state()``. Everything else (frame
skip, scaling actions from [-1, 1] to the actuators' ctrl ranges, the camera, the smooth random
policy) lives here.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys

import numpy as np
from pydantic import Field

from worldkit.interfaces import Environment, PluginConfig

_LATE = False  # mujoco was imported by someone else before MUJOCO_GL was set


class _Mujoco:
    """``mujoco``, imported on first use: the env classes and their configs load without it (machines
    that only train from cached episodes need no MuJoCo), and MUJOCO_GL is set before the import."""

    def __getattr__(self, name: str):
        global _LATE
        if "mujoco" not in sys.modules:
            os.environ.setdefault("MUJOCO_GL", "egl")  # Mesa's EGL renders offscreen on the CPU
            # Triton imported after Mesa's EGL has made a context segfaults (both bring their own LLVM), and
            # torch imports Triton late (Lightning, torch.compile): import it first where it is installed
            if importlib.util.find_spec("triton") is not None:
                importlib.import_module("triton")
        elif "MUJOCO_GL" not in os.environ:  # its GL backend was picked already, maybe without offscreen GL
            _LATE = True
        return getattr(importlib.import_module("mujoco"), name)


mujoco = _Mujoco()

SHADOW_SIZE = 256  # MuJoCo's default 4096 shadow map makes CPU rendering about 11x slower

# Put inside every model's <mujoco>: small shadow map, flat high-contrast look at 32x32.
VISUAL_XML = f"""
  <visual>
    <quality shadowsize="{SHADOW_SIZE}"/>
    <headlight ambient="0.4 0.4 0.4" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
    <rgba haze="0 0 0 1"/>
  </visual>
"""


class MujocoConfig(PluginConfig):
    """Options every MuJoCo env shares."""

    size: int = Field(32, ge=8, le=1024, description="frame height and width in pixels")
    frame_skip: int = Field(5, ge=1, description="physics steps per frame")
    policy_tau: float = Field(8.0, gt=0, description="random policy correlation time, in frames")
    policy_std: float = Field(0.6, ge=0, description="random policy stationary std before clipping")
    supersample: int = Field(2, ge=1, le=4, description="render at size x this, then average blocks (antialiasing)")


def ou_actions(rng: np.random.Generator, steps: int, dim: int, tau: float, std: float) -> np.ndarray:
    """Ornstein-Uhlenbeck noise clipped to [-1, 1], (steps, dim) float32; stationary std ``std``."""
    decay = np.exp(-1.0 / tau)
    kick = std * np.sqrt(1.0 - decay**2)
    a = std * rng.standard_normal(dim)  # start in the stationary distribution; drawn before the noise,
    noise = rng.standard_normal((steps, dim))  # (steps, A), so a longer episode extends a shorter one
    out = np.empty((steps, dim))  # (steps, A)
    for t in range(steps):
        a = decay * a + kick * noise[t]
        out[t] = a
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def wrap_angle(x):
    """Angles wrapped to [-pi, pi)."""
    return (np.asarray(x) + np.pi) % (2 * np.pi) - np.pi


class MujocoEnv(Environment):
    """Base of the MuJoCo environments (not registered itself)."""

    Config = MujocoConfig
    camera = "main"  # name of the camera frames are rendered from

    def __init__(self, config: MujocoConfig | None = None):
        super().__init__(config)
        self.model = self.load_model()
        self.model.vis.quality.shadowsize = min(int(self.model.vis.quality.shadowsize), SHADOW_SIZE)
        # antialias by supersampling: at 32x32, 2x2 supersampling costs a third of MuJoCo's 4x MSAA
        self.model.vis.quality.offsamples = 0
        size = self.config.size * self.config.supersample
        self.model.vis.global_.offwidth = max(int(self.model.vis.global_.offwidth), size)
        self.model.vis.global_.offheight = max(int(self.model.vis.global_.offheight), size)
        self.data = mujoco.MjData(self.model)
        self.check_camera(self.camera)
        try:
            self.renderer = mujoco.Renderer(self.model, height=size, width=size)
        except Exception as exc:
            if not _LATE:
                raise
            raise RuntimeError(
                "mujoco was imported before worldkit's envs could set MUJOCO_GL=egl; set MUJOCO_GL=egl in "
                "the environment or import the env plugins before mujoco"
            ) from exc
        ctrl = self.model.actuator_ctrlrange.astype(np.float64).copy()  # (nu, 2)
        unlimited = self.model.actuator_ctrllimited == 0
        ctrl[unlimited] = (-1.0, 1.0)  # actuators without a range take the raw action
        self._ctrl_lo, self._ctrl_hi = ctrl[:, 0], ctrl[:, 1]  # (nu,)
        self.reset(0)  # a fresh env is always a valid episode
        self._state_dim = int(self.state().shape[0])

    # ---- hooks for subclasses --------------------------------------------------------------------

    def model_xml(self) -> str:
        """The MJCF of this env."""
        raise NotImplementedError

    def load_model(self) -> mujoco.MjModel:
        """Compile the model (default: from ``model_xml()``)."""
        return mujoco.MjModel.from_xml_string(self.model_xml())

    def init_episode(self, rng: np.random.Generator) -> None:
        """Draw the episode's initial state into ``self.data`` (and the model's per-episode looks)."""

    @classmethod
    def cache_inputs(cls, config: MujocoConfig) -> dict:
        """The model's MJCF text and the source of the env's module and of this one (initial states,
        policy, rendering): editing any of them records the episodes anew. Plain text, so machines
        without MuJoCo that train from a copied cache compute the same key."""
        bare = cls.__new__(cls)  # no model, no renderer: only what model_source reads
        bare.config = config
        code = "".join(inspect.getsource(sys.modules[m]) for m in dict.fromkeys([cls.__module__, __name__]))
        return {"model_sha256": hashlib.sha256(bare.model_source()).hexdigest(),
                "code_sha256": hashlib.sha256(code.encode()).hexdigest()}

    def model_source(self) -> bytes:
        """The bytes the model is compiled from (default: ``model_xml()``), for the cache key."""
        return self.model_xml().encode()

    # ---- Environment -----------------------------------------------------------------------------

    @property
    def action_dim(self) -> int:
        return int(self.model.nu)

    @property
    def state_dim(self) -> int:
        return self._state_dim

    def reset(self, seed: int) -> None:
        mujoco.mj_resetData(self.model, self.data)
        self.init_episode(np.random.default_rng(seed))
        self.forward()

    def step(self, action: np.ndarray) -> None:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)  # (A,)
        self.data.ctrl[:] = self._ctrl_lo + (a + 1.0) * 0.5 * (self._ctrl_hi - self._ctrl_lo)
        mujoco.mj_step(self.model, self.data, nstep=self.config.frame_skip)

    def render(self) -> np.ndarray:
        self.renderer.update_scene(self.data, camera=self.camera)
        frame = self.renderer.render()  # (H*k, W*k, 3) uint8, k = supersample
        k, n = self.config.supersample, self.config.size
        if k == 1:
            return frame.copy()  # (H, W, 3) uint8
        blocks = frame.reshape(n, k, n, k, 3).mean(axis=(1, 3))  # (H, W, 3) float
        return (blocks + 0.5).astype(np.uint8)  # (H, W, 3) uint8

    def sample_actions(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        c = self.config
        return ou_actions(rng, steps, self.action_dim, c.policy_tau, c.policy_std)  # (steps, A)

    # ---- helpers ---------------------------------------------------------------------------------

    def camera_names(self) -> list[str]:
        """Names of the model's cameras."""
        return [mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(self.model.ncam)]

    def check_camera(self, name: str, field: str = "camera") -> None:
        """Raise ``ValueError`` naming ``field`` and the choices when the model has no camera ``name``."""
        if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, name) < 0:
            raise ValueError(f"{field}: no camera named {name!r} in the model; choices: {self.camera_names()}")

    def forward(self) -> None:
        """Recompute derived quantities (positions, contacts) after editing ``self.data`` directly."""
        mujoco.mj_forward(self.model, self.data)

    @property
    def frame_dt(self) -> float:
        """Simulated seconds between two frames."""
        return float(self.model.opt.timestep) * self.config.frame_skip

    def close(self) -> None:
        """Free the renderer's GL context."""
        self.renderer.close()
