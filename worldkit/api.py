"""The Python API beside the command line: load weights, record episodes, roll out under any plugins,
score recall, evaluate under an experiment's plugins, make the report.

    import worldkit.api as wk

    world = wk.load("base/revisit_room")                  # a shipped base, or a run's model.pt
    eps = world.episodes(4, frames=74)                     # test episodes of the weights' environment
    out = world.rollout(eps, memory={"type": "sliding_window", "window_frames": 9})
    out.frames, out.ms_per_chunk, out.kv_bytes             # (N, F, 3, H, W) in [-1, 1]; per chunk
    world.recall(eps, {"window": out})                     # recall at returns by gap (envs that define it)
    world.evaluate("experiments/sparse_forcing.yaml", "runs/mine")   # = worldkit eval (writes results.md)
    wk.report("runs/ablation-...")                         # = worldkit report: a grid folder's tables again

A plugin is named by its type (``"sliding_window"``) or given as ``{"type": ..., field: value}``, as in
an experiment YAML; every installed plugin works, third-party ones included.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from worldkit.errors import WorldkitError

PluginSpec = Union[str, dict]


@dataclass
class Episodes:
    """Recorded episodes: frames (N, T, 3, H, W) in [-1, 1], actions (N, T, A), simulator states (N, T, S)."""

    frames: Tensor
    actions: Tensor
    states: np.ndarray
    env: str
    env_config: dict

    def __len__(self) -> int:
        return self.frames.shape[0]

    def images(self) -> np.ndarray:
        """The frames as uint8 images (N, T, H, W, 3)."""
        from worldkit.frames import tensor_to_frames

        return tensor_to_frames(self.frames)


@dataclass
class RolloutResult:
    """What one rollout made: the generated frames (N, F, 3, H, W) in [-1, 1] after ``context_frames``
    true ones, the wall time of each chunk (ms, the whole batch) and the KV bytes one sequence holds after
    each chunk's commit."""

    frames: Tensor
    context_frames: int
    ms_per_chunk: list[float] = field(default_factory=list)
    kv_bytes: list[int] = field(default_factory=list)

    def images(self) -> np.ndarray:
        from worldkit.frames import tensor_to_frames

        return tensor_to_frames(self.frames)


def _recorded_config(weights: str, path: Path) -> Optional[Any]:
    """The experiment config the weights were trained with, if recorded: a shipped base's model card
    carries it as a YAML block (``worldkit.cards``), a run's model.pt sits below its run folder's
    config.yaml."""
    import yaml

    from worldkit import config as wk_config

    try:
        if weights.startswith("base/"):
            card = path.with_suffix(".md")
            block = re.search(r"```yaml\n(.*?)```", card.read_text(), re.S) if card.exists() else None
            return wk_config.validate(yaml.safe_load(block.group(1)), source=str(card)) if block else None
        for parent in list(path.resolve().parents)[:4]:
            if (parent / "config.yaml").exists():
                return wk_config.load(parent / "config.yaml")
    except Exception:  # an unreadable record: the caller asks for env=
        return None
    return None


class World:
    """A world model with the environment it models, ready to roll out under any plugins."""

    def __init__(self, model, env: str, env_config: Optional[dict] = None, train_frames: int = 16,
                 sampler_steps: int = 4, shift: float = 1.0, weights: Optional[str] = None):
        self.model = model.eval()
        self.env, self.env_config = env, dict(env_config or {})
        self.train_frames, self.sampler_steps, self.shift = train_frames, sampler_steps, shift
        self.weights = weights

    @classmethod
    def load(cls, weights: str, env: Optional[str] = None, env_config: Optional[dict] = None,
             train_frames: Optional[int] = None, sampler_steps: Optional[int] = None,
             block_patches: Optional[int] = None) -> "World":
        """Weights by shipped name (``base/revisit_room``) or path (a run's ``model.pt``). The environment,
        training clip and sampler come from the base's model card or the run's config.yaml unless given;
        ``block_patches`` reads the weights at another cache block size (the weights do not depend on it)."""
        from worldkit.checkpoints import load_model, resolve_init

        path = resolve_init(weights, "weights")
        model = load_model(weights, "weights", block_patches=block_patches)
        facts = {"env": None, "clip": None, "steps": None, "shift": None, "env_config": {}}
        cfg = _recorded_config(str(weights), Path(path))
        if cfg is not None:
            facts.update(env=cfg.env.type, env_config=cfg.env.config.model_dump(mode="json"),
                         clip=cfg.train.clip_frames, steps=cfg.model.sampler_steps, shift=cfg.model.shift)
        env = env or facts["env"]
        if env is None:
            raise WorldkitError(f"weights: {path}: which environment it models is not recorded (no model card or "
                                "run config.yaml beside it); pass env=NAME")
        if env_config is None:  # the recorded settings; for another env, those of them it has (size, ...)
            from worldkit import registry

            fields = registry.get("env", env).Config.model_fields
            env_config = {k: v for k, v in facts["env_config"].items() if env == facts["env"] or k in fields}
        return cls(model, env, env_config,
                   train_frames=train_frames or facts["clip"] or 16, sampler_steps=sampler_steps or facts["steps"] or 4,
                   shift=facts["shift"] or 1.0, weights=str(weights))

    # ---- data ---------------------------------------------------------------------------------
    def episodes(self, n: int = 4, frames: int = 64, split: str = "test", cache_dir: Optional[str] = None) -> Episodes:
        """``n`` recorded episodes of ``frames`` frames of the world's environment (the same seeds as the
        experiments' ``split``; cached like them)."""
        from worldkit import data as wk_data
        from worldkit.frames import frames_to_tensor
        from worldkit.schema import DataConfig

        cache = cache_dir or DataConfig().cache_path
        config = wk_data.resolve_config(self.env, self.env_config)
        s = wk_data.load_split(self.env, config, split, n, frames, cache, 0)
        return Episodes(frames_to_tensor(s.frames), torch.from_numpy(s.actions).float(), s.states, self.env, config)

    # ---- rollout ------------------------------------------------------------------------------
    def rollout(self, episodes: Episodes, memory: PluginSpec = "dense", selector: PluginSpec = "all",
                attention: PluginSpec = "sdpa", context_frames: int = 10, frames: Optional[int] = None,
                teacher_forced: bool = False, seed: int = 0) -> RolloutResult:
        """Roll the episodes out from their first ``context_frames`` true frames with their actions, for
        ``frames`` new frames (default: the rest of the episodes, whole chunks), under the given plugins.
        ``teacher_forced``: each chunk commits the true frames instead of its own."""
        from worldkit.rollout import Rollout
        from worldkit import registry

        fc = self.model.chunk_frames
        avail = episodes.frames.shape[1] - context_frames
        frames = (avail // fc) * fc if frames is None else frames
        if frames <= 0 or frames > avail or frames % fc:
            raise WorldkitError(f"frames: {frames} new frames after {context_frames} context frames of "
                                f"{episodes.frames.shape[1]}-frame episodes; must be a positive multiple of the "
                                f"{fc}-frame chunk, at most {avail}")
        r = Rollout(self.model, registry.build("memory", memory), registry.build("selector", selector),
                    registry.build("attention", attention), steps=self.sampler_steps, shift=self.shift,
                    train_frames=self.train_frames)
        dev = next(self.model.parameters()).device
        x = episodes.frames[:, : context_frames + frames].to(dev)
        a = episodes.actions[:, : context_frames + frames].to(dev)
        g = torch.Generator().manual_seed(seed)
        truth = {"truth": x[:, context_frames:]} if teacher_forced else {}
        with torch.no_grad():
            out = r.run(x[:, :context_frames], a, frames, generator=g, **truth)
        n = x.shape[0]
        return RolloutResult(out.cpu(), context_frames, [t.total_ms for t in r.timings],
                             [t.kv_bytes // n for t in r.timings])

    # ---- scores -------------------------------------------------------------------------------
    def recall(self, episodes: Episodes, rollouts: dict[str, RolloutResult]) -> dict[str, Any]:
        """Recall at returns by gap for each named rollout, beside the truth, persistence and the oracle
        (``worldkit.memory_metrics.recall``'s result: ``stats["colour"][name]`` is (mean, se) per gap
        bucket, ``buckets`` the labels). Raises for an environment with nothing to recall."""
        from worldkit import memory_metrics, metrics, registry

        env_cls = registry.get("env", episodes.env)
        targets = env_cls.recall_targets(env_cls.Config(**episodes.env_config), episodes.states)
        if targets is None:
            raise WorldkitError(f"env {episodes.env} defines no recall targets (revisit_room does)")
        ctxs = {r.context_frames for r in rollouts.values()}
        if len(ctxs) != 1:
            raise WorldkitError(f"rollouts start after different context lengths {sorted(ctxs)}; recall compares one")
        ctx = ctxs.pop()
        n_gen = min(r.frames.shape[1] for r in rollouts.values())
        truth = episodes.frames[:, : ctx + n_gen]
        generated = {name: r.frames[:, :n_gen] for name, r in rollouts.items()}
        generated.update(truth=truth[:, ctx:], persistence=metrics.persistence_forecast(truth[:, :ctx], n_gen))
        return memory_metrics.recall_with_oracle(generated, truth, targets, ctx)

    def evaluate(self, experiment: Union[str, Path], out: Union[str, Path], overrides: tuple[str, ...] = ()) -> list[dict]:
        """Score these weights as they are under every stage's and variant's plugins of an experiment
        YAML (``worldkit eval``): ``out`` gets a stage folder per variant and results.md."""
        from worldkit import config as wk_config
        from worldkit import experiment as wk_experiment

        if self.weights is None:
            raise WorldkitError("evaluate needs weights loaded from a file or shipped name (World.load)")
        # the weights as this World reads them (its block size included)
        read_as = [f"model.block_patches={self.model.hparams['block_patches']}"]
        cfg = wk_config.load_for_eval(experiment, self.weights, [*overrides, *read_as])
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        wk_config.save(cfg, out / "config.yaml")
        return wk_experiment.evaluate_weights(cfg, self.weights, out)


def load(weights: str, **kwargs) -> World:
    """``World.load``: weights by shipped name or path, with the environment they model."""
    return World.load(weights, **kwargs)


def report(grid_dir: Union[str, Path]) -> str:
    """Rebuild a grid folder's results.md, results.csv and plots from its cells (``worldkit report``); the
    table. (A run's or ``evaluate``'s folder gets its results.md when it finishes.)"""
    from worldkit import report as wk_report

    return wk_report.build(grid_dir)
