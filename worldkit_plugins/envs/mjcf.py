"""MJCF: any MuJoCo model file, rendered from one of its named cameras, its actuators as actions."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator

from worldkit_plugins.envs.base import MujocoConfig, MujocoEnv, mujoco


class MJCFEnv(MujocoEnv):
    """A user's MJCF file seen from a named camera; state: qpos and qvel."""

    class Config(MujocoConfig):
        path: str = Field(description="MJCF (.xml) file to load")
        camera: str = Field(description="name of a camera defined in the file")
        init_noise: float = Field(0.1, ge=0, description="uniform noise added to hinge/slide qpos and all qvel")

        @field_validator("path")
        @classmethod
        def _file_exists(cls, v: str) -> str:
            if not Path(v).expanduser().is_file():
                raise ValueError(f"path: no such MJCF file: {v!r}")
            return str(Path(v).expanduser())

        @model_validator(mode="after")
        def _camera_exists(self):
            model = mujoco.MjModel.from_xml_path(self.path)
            names = [model.camera(i).name for i in range(model.ncam)]
            if self.camera not in names:
                raise ValueError(f"camera: no camera named {self.camera!r} in {self.path}; choices: {names}")
            return self

    @classmethod
    def cache_inputs(cls, config: Config) -> dict:
        """The compiled model (the file, what it includes, its meshes and textures): editing any of them
        changes the cached episodes' key."""
        model = mujoco.MjModel.from_xml_path(config.path)
        binary = np.empty(mujoco.mj_sizeModel(model), dtype=np.uint8)
        mujoco.mj_saveModel(model, None, binary)
        return {"model_sha256": hashlib.sha256(binary.tobytes()).hexdigest()}

    def __init__(self, config: Config):
        self.camera = config.camera
        super().__init__(config)

    def load_model(self) -> mujoco.MjModel:
        return mujoco.MjModel.from_xml_path(self.config.path)

    def init_episode(self, rng: np.random.Generator) -> None:
        m, d, eps = self.model, self.data, self.config.init_noise
        scalar = np.isin(m.jnt_type, [mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE])  # (njnt,)
        adr = m.jnt_qposadr[scalar]  # qpos entries of hinge and slide joints
        d.qpos[adr] += rng.uniform(-eps, eps, size=len(adr))
        d.qvel[:] += rng.uniform(-eps, eps, size=m.nv)

    def state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float32)  # (nq + nv,)
