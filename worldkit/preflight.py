"""What ``worldkit run`` would refuse once started, checked before any work: by ``run`` before it makes a
folder and by ``validate``.

Beyond the schema and the plugins' own ``check``s (``worldkit.config``): every checkpoint the experiment
reads (``model.init`` and those a plugin names, such as a DMD teacher) exists, is a checkpoint and was
trained with the experiment's model settings; each trainer can start from the weights its stage starts
from (``check_start``); the data cache and run folders are folders or can be made. One line per problem,
naming the field, the value and what is wrong. Light: torch is imported only when a checkpoint is to be
read (``worldkit.checkpoints``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Optional

from worldkit import registry
from worldkit.checkpoints import read_checkpoint, resolve_init, settings_mismatch
from worldkit.errors import WorldkitError
from worldkit.interfaces import STAGE_KINDS
from worldkit.schema import ExperimentConfig



def problems(cfg: ExperimentConfig, out: Optional[str] = None) -> list[str]:
    """Every problem ``run`` would meet with ``cfg`` (``out``: the run folder given with ``--out``)."""
    found = folder_problem(cfg.data.cache_dir, "data.cache_dir")
    if out is None:
        found += folder_problem(cfg.out_root, "out_root")
    named = [("model.init", cfg.model.init)] if cfg.model.init else []
    named += [(f"{where}.{field}", name) for where, spec in plugin_specs(cfg)
              for field, name in spec.cls.checkpoints(spec.config).items()]
    found += checkpoint_problems(cfg, named)
    if not any(p.startswith("model.init:") for p in found):
        found += start_problems(cfg)
    return found


def check(cfg: ExperimentConfig, out: Optional[str] = None, source: Optional[str] = None) -> None:
    """Raise one ``WorldkitError`` listing every problem (each line prefixed with ``source``, the file)."""
    found = problems(cfg, out)
    if found:
        raise WorldkitError("\n".join(f"{source}: {p}" if source else p for p in found))


def plugin_specs(cfg: ExperimentConfig) -> Iterator[tuple[str, Any]]:
    """(field, PluginSpec) of each model-side plugin that runs, once per place it is set: the top-level
    ones that a stage or variant uses, then each stage's and variant's own."""
    replaced = set(cfg.replaced_plugins())
    for kind in STAGE_KINDS:
        if kind not in replaced:
            yield kind, getattr(cfg, kind)
    for group in ("stages", "compare"):
        for i, entry in enumerate(getattr(cfg, group)):
            for kind in STAGE_KINDS:
                if getattr(entry, kind) is not None:
                    yield f"{group}[{i}].{kind}", getattr(entry, kind)


def folder_problem(value: str, field: str) -> list[str]:
    """A folder a run writes into: it must be a folder, or be possible to make."""
    path = Path(value).expanduser()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path:
        return [] if path.is_dir() else [f"{field}: {value!r} is a file, not a folder"]
    if not existing.is_dir():
        return [f"{field}: {value!r} cannot be made: {existing} is a file"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"{field}: {value!r} cannot be made: {existing} is not writable"]
    return []


def expected_settings(cfg: ExperimentConfig) -> dict:
    """The model settings (``WorldModel.hparams``) the experiment builds, as far as the config says them:
    every model field, the frame size of an env with a square ``size``, the env's action dimension when
    the env can be built here (it cannot without its simulator)."""
    out = cfg.model.network()
    size = getattr(cfg.env.config, "size", None)
    if isinstance(size, int):
        out["frame_size"] = size
    try:
        env = registry.build("env", cfg.env)
    except Exception:  # no simulator on this machine: training from a copied cache can still run
        return out
    out["action_dim"] = env.action_dim
    if hasattr(env, "close"):
        env.close()
    return out


def checkpoint_problems(cfg: ExperimentConfig, named: list[tuple[str, str]]) -> list[str]:
    """Each named checkpoint (field, name) found, readable, and trained with the experiment's settings."""
    if not named:
        return []
    expected, found = None, []
    for field, name in dict.fromkeys(named):  # a teacher shared by stages is read once
        try:
            path = resolve_init(name, field)
            blob = read_checkpoint(path, field)
        except WorldkitError as err:
            found.append(str(err))
            continue
        if expected is None:
            expected = expected_settings(cfg)
        problem = settings_mismatch(blob, expected, path, field)
        if problem:
            found.append(problem)
    return found


def start_problems(cfg: ExperimentConfig) -> list[str]:
    """Each trainer's ``check_start`` where the weights its stage starts from are known now: the first
    stage (and the variants of a one-stage experiment) start from ``model.init`` or random weights, and
    such a stage with ``train.max_steps: 0`` (evaluation only) needs ``model.init``."""
    from worldkit.stages import resolve_stages

    init = None
    if cfg.model.init:
        init = resolve_init(cfg.model.init)
    stages = resolve_stages(cfg)
    first = [s for s in stages if s.index == 0 or (s.variant and len(cfg.stages) <= 1)]
    found = []
    for stage in first:
        where = f"stage {stage.name}: " if cfg.stages or cfg.compare else ""
        if stage.train.max_steps == 0:  # evaluates its starting weights: nothing is trained
            if init is None:
                found.append(f"{where}train.max_steps: 0 evaluates the starting weights, but there are none: "
                             "set model.init (a checkpoint or a shipped base)")
            continue
        trainer = registry.build("trainer", stage.trainer)
        try:
            trainer.check_start(init)
        except WorldkitError as err:
            found.append(f"{where}{err}")
    return found
