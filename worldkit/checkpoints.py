"""Checkpoints: finding one (a path, or a shipped base by name), reading it, checking its model settings
against an experiment's, loading and saving weights. Read by the experiment runner, validation
(``worldkit.preflight``), the Python API, ``worldkit eval`` and the trainers that load a teacher.

Light: torch is imported only when a checkpoint is read or written.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

from worldkit.errors import WorldkitError
from worldkit.files import atomic_path

if TYPE_CHECKING:
    import torch

BASE_DIR = Path(__file__).parent / "base"  # the shipped base checkpoints (``base/NAME``) and their model cards


def save_weights(model: "torch.nn.Module", path: Path) -> None:
    """The model's weights and constructor arguments, written atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save({"hparams": model.hparams, "state_dict": model.state_dict()}, tmp)


def resolve_init(name: str, field: str = "model.init") -> Path:
    """A checkpoint path, or a shipped base checkpoint by name (``base/pendulum``); ``field`` is the
    config field that names it, for the error."""
    p = Path(name).expanduser()
    if p.exists():
        return p
    if name.startswith("base/"):
        shipped = BASE_DIR / f"{name.removeprefix('base/')}.pt"
        if shipped.exists():
            return shipped
        have = sorted(f"base/{q.stem}" for q in BASE_DIR.glob("*.pt"))
        raise WorldkitError(f"{field}: no shipped checkpoint {name!r}; shipped: {', '.join(have) or 'none'}")
    raise WorldkitError(f"{field}: {name!r} is neither a file nor a shipped name (base/...)")


def read_checkpoint(path: Path, field: str = "model.init") -> dict:
    """A checkpoint's contents; a file that is not one is a user error naming it."""
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # not a torch file, truncated, a folder, ...
        raise WorldkitError(f"{field}: {path} is not a readable checkpoint ({type(err).__name__}: "
                            f"{str(err).strip().splitlines()[0][:120] if str(err).strip() else ''})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict", blob), dict):
        raise WorldkitError(f"{field}: {path} holds no state_dict (a model.pt or a Lightning .ckpt is expected)")
    return blob


# Model settings that do not change the weights: ``block_patches`` only groups tokens into cache blocks
# (what memory policies keep and selectors pick), so one set of weights can be read at any block size.
READ_TIME_SETTINGS = frozenset({"block_patches"})


def settings_mismatch(blob: dict, expected: dict, path: Path, field: str = "model.init") -> Optional[str]:
    """The error line when a checkpoint's model settings (``hparams``) differ from ``expected`` (only the
    settings both give are compared, read-time settings excepted); None when they agree."""
    mismatch = {k: v for k, v in blob.get("hparams", {}).items()
                if k in expected and expected[k] != v and k not in READ_TIME_SETTINGS}
    if not mismatch:
        return None
    return (f"{field}: {path} was trained with other model settings: "
            + ", ".join(f"{k}={v} (config has {expected[k]})" for k, v in mismatch.items()))


def load_weights(model: "torch.nn.Module", path: Path, field: str = "model.init") -> None:
    """Load the checkpoint at ``path`` into ``model``; a user error naming ``field`` when it cannot be read
    or was trained with other model settings."""
    blob = read_checkpoint(path, field)
    problem = settings_mismatch(blob, {k: model.hparams.get(k) for k in blob.get("hparams", {})}, path, field)
    if problem:
        raise WorldkitError(problem)
    model.load_state_dict(blob.get("state_dict", blob))


def load_model(weights: str, field: str = "weights", **read_time: object) -> "torch.nn.Module":
    """The ``WorldModel`` a checkpoint holds (a path or ``base/NAME``), built from its own settings and
    loaded, on the CPU. ``read_time`` overrides settings that do not change the weights
    (``READ_TIME_SETTINGS``, e.g. ``block_patches``); user errors name ``field``."""
    from worldkit.model import WorldModel

    path = resolve_init(weights, field)
    blob = read_checkpoint(path, field)
    hp = dict(blob.get("hparams") or {})
    if not hp:
        raise WorldkitError(f"{field}: {path} holds no model settings (hparams); give a model.pt written by a run "
                            "or a shipped base")
    other = sorted(set(read_time) - READ_TIME_SETTINGS)
    if other:
        raise WorldkitError(f"{field}: {', '.join(other)} change the weights; only {', '.join(sorted(READ_TIME_SETTINGS))} "
                            "can be chosen when reading them")
    model = WorldModel(**{**hp, **{k: v for k, v in read_time.items() if v is not None}})
    model.load_state_dict(blob["state_dict"])
    return model
