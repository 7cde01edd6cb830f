"""MJCF: any MuJoCo model file, rendered from one of its named cameras, its actuators as actions."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator

from worldkit_plugins.envs.base import MujocoConfig, MujocoEnv, mujoco


def _model_files(main: Path) -> list[bytes]:
    """The bytes of ``main``, of the files it includes (recursively) and of every other file they name
    (meshes, textures, ...). As MuJoCo does, include paths are relative to the main file's folder, and
    assets to it or to the compiler's asset folders declared anywhere in the tree."""
    base, xmls, assets, dirs, queue = main.parent, {}, set(), [main.parent], [main]
    while queue:
        path = queue.pop()
        if path in xmls or not path.is_file():
            continue
        xmls[path] = path.read_bytes()
        try:
            root = ET.fromstring(xmls[path])
        except ET.ParseError:
            continue
        for element in root.iter():
            name = element.get("file")
            if element.tag == "include" and name:
                queue.append(base / name)
            elif name:
                assets.add(name)
            if element.tag == "compiler":
                dirs += [base / element.get(k) for k in ("assetdir", "meshdir", "texturedir") if element.get(k)]
    out = [part for path in sorted(xmls) for part in (str(path.relative_to(base)).encode(), xmls[path])]
    for name in sorted(assets):
        found = next((d / name for d in dirs if (d / name).is_file()), None)
        if found is not None:
            out += [name.encode(), found.read_bytes()]
    return out


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

    def __init__(self, config: Config):
        self.camera = config.camera
        super().__init__(config)

    def model_source(self) -> bytes:
        """The file and every file it names (includes, meshes, textures, ...), found beside it or in the
        compiler's asset folders: what the compiled model depends on."""
        return b"".join(_model_files(Path(self.config.path)))

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
