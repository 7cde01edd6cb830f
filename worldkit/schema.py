"""The experiment schema: pydantic models for an experiment YAML, with the CPU quality defaults.

A plugin field (``env``, ``memory``, ``selector``, ``attention``, ``trainer``) is written
``{type: NAME, ...}``: validation finds ``NAME`` in the registry, then the plugin's own ``Config``
validates the remaining keys, and the field becomes a ``PluginSpec``. Defaults follow docs/design.md
"Sizes", row "CPU quality default".
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from worldkit import registry
from worldkit.errors import PluginError
from worldkit.interfaces import MODEL_KINDS, STAGE_KINDS, Plugin, PluginConfig


def _problem(loc: tuple, value: Any, message: str) -> InitErrorDetails:
    """One pydantic line error carrying a plain-text message (braces in it are not formatted)."""
    return {"type": PydanticCustomError("worldkit", "{message}", {"message": message}), "loc": loc, "input": value}


def _relocate(error: dict, prefix: tuple) -> InitErrorDetails:
    """A line error of a nested validation moved under ``prefix``, keeping its type and context."""
    loc = (*prefix, *error["loc"])
    return {"type": error["type"], "loc": loc, "input": error["input"], "ctx": error.get("ctx", {})}


def _dotted(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _raise(problems: list[InitErrorDetails], title: str) -> None:
    if problems:
        raise ValidationError.from_exception_data(title, problems)


# --------------------------------------------------------------------------------------------------
# Plugin fields


@dataclass(frozen=True)
class PluginKind:
    """Annotation marker: this field is a ``PluginSpec`` of ``kind``."""

    kind: str


@dataclass(frozen=True)
class OverridesOf:
    """Annotation marker: this dict holds partial overrides of ``model``'s fields."""

    model: type[BaseModel]


@dataclass(frozen=True)
class PluginSpec:
    """A validated plugin field: the kind, the registered name and the plugin's own validated Config.

    In a schema, ``PluginSpec["memory"]`` is the annotation of a field holding a memory plugin.
    """

    kind: str
    type: str
    config: PluginConfig

    def __class_getitem__(cls, kind: str) -> Any:
        return Annotated[
            PluginSpec,
            PluginKind(kind),
            PlainValidator(lambda value: PluginSpec.validate(kind, value)),
            PlainSerializer(lambda spec: spec.to_dict()),
        ]

    @property
    def cls(self) -> type[Plugin]:
        return registry.get(self.kind, self.type)

    def build(self) -> Plugin:
        """A fresh plugin instance built from this config (``registry.build(kind, self)``)."""
        return registry.build(self.kind, self)

    def to_dict(self) -> dict[str, Any]:
        """``{type: NAME, **config}``, every config field included, ready for YAML."""
        return {"type": self.type, **self.config.model_dump(mode="json")}

    @staticmethod
    def validate(kind: str, value: Any) -> "PluginSpec":
        """Stage 1: find ``value["type"]`` in the registry; stage 2: the plugin's Config checks the rest."""
        if isinstance(value, PluginSpec):
            if value.kind != kind:
                _raise([_problem((), value.to_dict(), f"expected a {kind} plugin, got a {value.kind} plugin")], kind)
            return value
        if not isinstance(value, dict):
            choices = ", ".join(registry.names(kind))
            _raise([_problem((), value, f"expected a mapping {{type: NAME, ...}}; {kind} choices: {choices}")], kind)
        if "type" not in value:
            choices = ", ".join(registry.names(kind))
            _raise([_problem(("type",), value, f"missing; {kind} choices: {choices}")], kind)
        name = value["type"]
        if not isinstance(name, str):
            _raise([_problem(("type",), name, f"expected a {kind} plugin name (a string)")], kind)
        try:
            cls = registry.get(kind, name)
        except PluginError as err:
            _raise([_problem(("type",), name, str(err))], kind)
        config = cls.Config.model_validate({k: v for k, v in value.items() if k != "type"})
        return PluginSpec(kind, name, config)


def plugin(name: str) -> Any:
    """Default of a plugin field: ``{type: name}``, validated (so looked up) when a config is built."""
    return Field(default_factory=lambda: {"type": name}, validate_default=True)


# --------------------------------------------------------------------------------------------------
# Plain sections


class Section(BaseModel):
    """Base of the schema's sections: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    """Episodes generated from the env and cached on disk."""

    train_episodes: PositiveInt = 256
    val_episodes: PositiveInt = 16
    test_episodes: PositiveInt = 16
    episode_frames: PositiveInt = 64
    cache_dir: str = Field(default_factory=lambda: os.environ.get("WORLDKIT_CACHE", "~/.cache/worldkit"))
    workers: int = Field(2, ge=0)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir).expanduser()


class ModelConfig(Section):
    """The causal video-diffusion transformer."""

    patch: PositiveInt = 8  # pixels per patch side
    width: PositiveInt = 128
    layers: PositiveInt = 4
    heads: PositiveInt = 4
    mlp_ratio: PositiveFloat = 4.0
    block_patches: PositiveInt = 2  # a KV block is block_patches x block_patches patches of one frame
    chunk_frames: PositiveInt = 2  # frames generated per autoregressive step
    prediction: Literal["x0", "v"] = "x0"
    sampler_steps: PositiveInt = 4
    shift: PositiveFloat = 1.0  # noise-schedule shift
    init: Optional[str] = None  # a checkpoint path or a shipped name such as "base/pendulum"

    def network(self, **sizes: int) -> dict[str, Any]:
        """The ``WorldModel`` keyword arguments this section sets (not the sampler's steps and shift, nor
        ``init``), after ``sizes`` (``frame_size``, ``action_dim``: the env's)."""
        return dict(sizes, patch=self.patch, width=self.width, layers=self.layers, heads=self.heads,
                    mlp_ratio=self.mlp_ratio, block_patches=self.block_patches, chunk_frames=self.chunk_frames,
                    prediction=self.prediction)


class TrainConfig(Section):
    """Optimisation and the Lightning trainer."""

    max_steps: int = Field(1000, ge=0, description="optimizer steps; 0: no training, the stage evaluates the "
                                                    "weights it starts from")
    batch_size: PositiveInt = 32
    clip_frames: PositiveInt = 16
    lr: PositiveFloat = 3e-4
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field((0.9, 0.99), description="AdamW's (beta1, beta2); Self-Forcing's DMD uses "
                                                                 "(0, 0.999)")
    warmup_steps: int = Field(100, ge=0)
    schedule: Literal["constant", "cosine"] = "cosine"
    precision: Literal["64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine"] = "32-true"
    grad_clip: Optional[PositiveFloat] = 1.0
    accumulate: PositiveInt = 1
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"
    devices: Union[PositiveInt, Literal["auto"]] = Field(1, description="a device count, or 'auto'")
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true", "fsdp"] = Field(
        "auto", description="ddp_find_unused_parameters_true: DDP when some steps leave parameters unused "
                            "(self_forcing with dmd: the generator sits out the critic-only steps)")
    num_nodes: PositiveInt = 1
    ema: Optional[float] = Field(None, gt=0, lt=1, description="EMA decay of the weights evaluated and saved, "
                                 "warmed up as min(ema, (1 + step) / (10 + step))")
    log_every: PositiveInt = 10
    val_every: PositiveInt = 200
    eval_every: Optional[PositiveInt] = None
    max_minutes: Optional[PositiveFloat] = None  # stop the stage after this wall time (a safety net)


class EvalConfig(Section):
    """Long-horizon rollouts against ground truth."""

    horizons: list[PositiveInt] = Field(default_factory=lambda: [1, 4, 12], min_length=1)  # in multiples of train.clip_frames
    context_frames: PositiveInt = 2
    episodes: PositiveInt = 16
    seeds: PositiveInt = 1  # sampling seeds per episode, averaged within the episode (standard errors are over episodes)
    strips: int = Field(4, ge=0)  # episodes drawn as image strips
    probe_steps: int = Field(1500, ge=0)  # training steps of the state probe (0: no state error)
    cache: Literal["rollout", "truth"] = Field(
        "rollout", description="what each chunk commits to the cache: its own frames (a rollout), or the true "
        "ones (teacher forced: each chunk is a one-chunk forecast from real history, which tests what a memory "
        "policy keeps without the drift of the model's own frames)")
    # a stage or variant name: in the recall table every other row is compared with it, episode by
    # episode (e.g. the sliding window with the same KV budget)
    reference: Optional[str] = None


def _folder_name(name: str) -> str:
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError("must name a folder: not empty, '.' or '..', no '/' or '\\'")
    return name


class StageConfig(Section):
    """One stage of a multi-stage run: plugin overrides (the top-level plugin where absent) and train
    overrides (merged onto the top-level train section)."""

    name: Annotated[str, AfterValidator(_folder_name)]  # also its folder's name: stages/<i>-<name>
    trainer: Optional[PluginSpec["trainer"]] = None
    memory: Optional[PluginSpec["memory"]] = None
    selector: Optional[PluginSpec["selector"]] = None
    attention: Optional[PluginSpec["attention"]] = None
    train: Annotated[dict[str, Any], OverridesOf(TrainConfig)] = Field(default_factory=dict)


class ExperimentConfig(Section):
    """One experiment: an env, a model, the four model-side plugins, training, evaluation, stages."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # also the run folder's name prefix
    seed: int = 0
    out_root: str = "runs"
    env: PluginSpec["env"]
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    memory: PluginSpec["memory"] = plugin("dense")
    selector: PluginSpec["selector"] = plugin("all")
    attention: PluginSpec["attention"] = plugin("sdpa")
    trainer: PluginSpec["trainer"] = plugin("diffusion_forcing")
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stages: list[StageConfig] = Field(default_factory=list)
    # Variants compared with the last stage: each starts from the same weights as the last stage (its
    # budget unless it sets its own ``train``), and is evaluated the same way.
    compare: list[StageConfig] = Field(default_factory=list)
    # A grid experiment (worldkit/grid.py): dotted config path -> the values to try; the cells are the
    # product, minus each partial assignment in ``exclude``. Each cell is this experiment with its values set.
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    exclude: list[Annotated[dict[str, Any], Field(min_length=1)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> "ExperimentConfig":
        """Cross-field checks; every problem is reported, each at the field to change."""
        problems: list[InitErrorDetails] = []
        m = self.model
        if m.width % m.heads:
            problems.append(_problem(("model", "heads"), m.heads, f"must divide model.width={m.width}"))
        size = getattr(self.env.config, "size", None)
        if isinstance(size, int):
            if size % m.patch:
                problems.append(_problem(("model", "patch"), m.patch, f"must divide the env frame size {size}"))
            elif (size // m.patch) % m.block_patches:
                problems.append(_problem(
                    ("model", "block_patches"), m.block_patches,
                    f"must divide the patches per side ({size} px / patch {m.patch} = {size // m.patch})",
                ))
        problems += self._check_train(self.train, ("train",))
        e = self.eval
        if e.context_frames % m.chunk_frames:
            problems.append(_problem(("eval", "context_frames"), e.context_frames,
                                     f"must be a multiple of model.chunk_frames={m.chunk_frames}"))
        if any(b <= a for a, b in zip(e.horizons, e.horizons[1:])):
            problems.append(_problem(("eval", "horizons"), e.horizons, "must be increasing (multiples of train.clip_frames)"))
        names = [s.name for s in (*self.stages, *self.compare)] or ["train"]
        if e.reference is not None and e.reference not in names:
            problems.append(_problem(("eval", "reference"), e.reference,
                                     f"not a stage or variant of this experiment; choices: {', '.join(names)}"))
        seen: set[str] = set()
        plugins = not self.grid  # a grid's cells are checked one by one: a cell may set what the base lacks
        if not self.stages and plugins:
            problems += self._check_plugins(self, {})
        for i, stage in enumerate(self.stages):
            if stage.name in seen:
                problems.append(_problem(("stages", i, "name"), stage.name, "stage names must be unique"))
            seen.add(stage.name)
            try:
                train = TrainConfig.model_validate({**self.train.model_dump(), **stage.train})
            except ValidationError as err:
                problems += [_relocate(e, ("stages", i, "train")) for e in err.errors()]
                continue
            problems += self._check_train(train, ("stages", i, "train"))
            if plugins:
                problems += self._check_plugins(self.stage_config(stage), stage, ("stages", i))
        for i, variant in enumerate(self.compare):
            try:
                merged = self.stage_config(variant, base=self.stages[-1] if self.stages else None)
            except ValidationError as err:  # the variant's own train keys; the last stage's are reported above
                problems += [_relocate(e, ("compare", i, "train")) for e in err.errors()
                             if e["loc"] and e["loc"][0] in variant.train]
                continue
            if "clip_frames" in variant.train:  # the key _check_train reads; what it inherits is reported at the stage
                problems += self._check_train(merged.train, ("compare", i, "train"))
            if plugins:
                problems += self._check_plugins(merged, variant, ("compare", i))
        unique = {(tuple(p["loc"]), str(p["type"])): p for p in problems}  # a shared plugin is reported once
        _raise(list(unique.values()), type(self).__name__)
        return self

    @staticmethod
    def _check_plugins(exp: "ExperimentConfig", stage: Any, loc: tuple = ()) -> list[InitErrorDetails]:
        """Each model-side plugin's own ``check`` against the experiment as the stage sees it; a problem
        is reported where the plugin was set (the stage's override, else the top level)."""
        problems = []
        for kind in (*MODEL_KINDS, "trainer"):
            if kind == "trainer" and exp.train.max_steps == 0:  # an evaluation-only stage trains nothing
                continue
            spec = getattr(exp, kind)
            where = (*loc, kind) if getattr(stage, kind, None) is not None else (kind,)
            for field, value, message in spec.cls.check(spec.config, exp):
                problems.append(_problem((*where, field), value, message))
        return problems

    def _check_train(self, train: TrainConfig, loc: tuple) -> list[InitErrorDetails]:
        problems = []
        if train.clip_frames % self.model.chunk_frames:
            problems.append(_problem(
                (*loc, "clip_frames"), train.clip_frames,
                f"must be a multiple of model.chunk_frames={self.model.chunk_frames}",
            ))
        if self.data.episode_frames < train.clip_frames:
            problems.append(_problem(
                ("data", "episode_frames"), self.data.episode_frames,
                f"must be at least {_dotted(loc)}.clip_frames={train.clip_frames}",
            ))
        return problems

    def replaced_plugins(self) -> list[str]:
        """Top-level plugin fields that no stage or variant uses (each sets its own)."""
        entries = [*self.stages, *self.compare]
        if not self.stages:
            return []
        return [kind for kind in STAGE_KINDS
                if all(getattr(e, kind) is not None for e in entries)]

    def warnings(self) -> list[str]:
        """Settings given that have no effect, or less than asked: said, not refused."""
        out = [f"{kind}: unused, every stage{' and variant' if self.compare else ''} sets its own {kind} "
               f"(a stage's {kind} replaces the top-level one); set it per stage, e.g. stages[0].{kind}"
               for kind in self.replaced_plugins() if kind in self.model_fields_set]
        if self.eval.episodes > self.data.test_episodes:
            out.append(f"eval.episodes: {self.eval.episodes}, but data.test_episodes={self.data.test_episodes}: "
                       f"evaluation uses the {self.data.test_episodes} held-out episodes there are")
        return out

    def stage_config(self, stage: StageConfig, base: Optional[StageConfig] = None) -> "ExperimentConfig":
        """The experiment as one stage sees it: the stage's trainer and plugin overrides, merged train
        (merged onto ``base``'s, for a comparison variant of the last stage)."""
        update: dict[str, Any] = {"stages": [], "compare": []}
        for field in STAGE_KINDS:
            if getattr(stage, field) is not None:
                update[field] = getattr(stage, field)
        train = {**self.train.model_dump(), **(base.train if base is not None else {})}
        update["train"] = TrainConfig.model_validate({**train, **stage.train})
        return self.model_copy(update=update)
