"""The plugin kinds of worldkit and the small data types they exchange.

Every plugin is a class that subclasses one of the kinds below, carries a nested pydantic ``Config``
and is built from it: ``Plugin(config)``. The registry (``worldkit.registry``) finds plugins by name
through one entry-point group per kind.

Token layout used throughout: a frame of ``gh x gw`` patches is cut into spatial blocks of
``block_patches x block_patches`` patches (``bh x bw`` where the model's geometry gives a pair); the
tokens of a frame are stored block-major (all tokens of block 0, then block 1, ...), so a block is a
contiguous run of ``block_tokens`` tokens and a chunk of ``F`` frames is ``F * blocks_per_frame``
consecutive blocks.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # torch is only needed by the model-side kinds
    from torch import Tensor


class PluginConfig(BaseModel):
    """Base of every plugin's ``Config``: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class Plugin(ABC):
    """Base of all plugins. The first line of a plugin's docstring is its one-line description."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: Optional[PluginConfig] = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def check(cls, config: PluginConfig, experiment: Any) -> list[tuple[str, Any, str]]:
        """Checks of ``config`` against the rest of the experiment (an ``ExperimentConfig`` as one stage
        sees it: its plugins and merged ``train``), run by validation so a bad combination fails before
        anything runs. Returns (field of config, its value, what is wrong) per problem."""
        return []

    @classmethod
    def checkpoints(cls, config: PluginConfig) -> dict[str, str]:
        """The checkpoints the plugin reads, by the field of ``config`` that names each (a path or a shipped
        name such as ``base/pendulum``): ``worldkit validate`` and ``worldkit run`` check before anything
        runs that each can be read and was trained with the experiment's model settings."""
        return {}

    @classmethod
    def report(cls) -> dict[str, Any]:
        """Files to write beside a stage's results once it is evaluated, ``{file name: JSON value}``: what
        the plugin wants kept about how it ran in this process (the Sparse Forcing plugins give
        ``kernels.json``, the Triton launch configurations and block-selection paths they kept). Called on
        the class of each of the stage's plugins; ``{}`` (the default): nothing."""
        return {}


# --------------------------------------------------------------------------------------------------
# Environments


class Environment(Plugin):
    """A simulator that renders frames: ``reset(seed)``, ``step(action)``, ``render()``, ``state()``."""

    kind = "env"
    # sample_actions draws a smooth random sequence (consecutive actions strongly correlated); an env
    # whose policy follows a schedule (turn, dwell, turn back) says False
    smooth_actions: ClassVar[bool] = True

    @property
    @abstractmethod
    def action_dim(self) -> int: ...

    @property
    @abstractmethod
    def state_dim(self) -> int: ...

    @abstractmethod
    def reset(self, seed: int) -> None:
        """Start a new episode; everything random in it is drawn from ``seed``."""

    @abstractmethod
    def step(self, action: np.ndarray) -> None:
        """Advance one frame with ``action`` (A,) in [-1, 1]."""

    @abstractmethod
    def render(self) -> np.ndarray:
        """The current frame, (H, W, 3) uint8."""

    @abstractmethod
    def state(self) -> np.ndarray:
        """Low-dimensional simulator state of the current frame, (S,) float32."""

    @abstractmethod
    def sample_actions(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """A random action sequence, (steps, A) float32 in [-1, 1]: smooth unless ``smooth_actions`` is False."""

    @classmethod
    def observable(cls, config: PluginConfig, states: np.ndarray) -> np.ndarray:
        """What one frame shows of the recorded states: (..., S) -> (..., S'). The state probe is trained
        to read this and forecasts are scored on it. Default: the whole state. An environment whose state
        holds things a frame cannot show (objects out of view, angles only known up to a symmetry)
        maps it to what can be seen."""
        return states

    @classmethod
    def observable_step(cls, config: PluginConfig, obs: np.ndarray, actions: np.ndarray) -> Optional[tuple[np.ndarray, list[int]]]:
        """The simulator's step on what a frame shows: from observable states ``obs`` (..., S') and the
        actions that follow them (..., A), the next frames' observable values on the dimensions the
        step determines, and those dimensions: ``(pred (..., k), dims)``. Scores the physics residual
        of a forecast (``worldkit.quality``). ``None`` (the default): not available."""
        return None

    @classmethod
    def recall_targets(cls, config: PluginConfig, states: np.ndarray) -> Any:
        """Where the env's remembered objects are in each recorded frame (``(N, T, S)`` states), for
        scoring recall by gap (``worldkit.memory_metrics``); ``None`` (the default) when the env has
        nothing to recall. The ``revisit_room`` env returns a ``worldkit.memory_metrics.RecallTargets``."""
        return None

    @classmethod
    def cache_inputs(cls, config: PluginConfig) -> dict:
        """What shapes the episodes beyond the config's own fields (the contents of a file it names, say),
        as JSON values; part of the data cache key, so changing it records the episodes anew."""
        return {}


# --------------------------------------------------------------------------------------------------
# KV cache: what a memory policy exposes to attention


@dataclass(frozen=True)
class CacheSpec:
    """Sizes a memory policy needs to lay out its cache."""

    layers: int
    batch: int
    heads: int
    head_dim: int
    block_tokens: int  # tokens per block (one spatial tile of one frame)
    blocks_per_frame: int
    chunk_frames: int  # frames generated per chunk
    train_frames: int  # training clip length in frames; positions should stay within what it covers
    dtype: Any = None  # torch.dtype
    device: Any = None  # torch.device

    @property
    def chunk_blocks(self) -> int:
        return self.chunk_frames * self.blocks_per_frame


@dataclass
class KVView:
    """What one layer's attention may read from the cache for the chunk being generated.

    The slot pool holds keys *without* their temporal rotation; ``slot_pos`` says at which temporal
    position (in frames) each slot is to be read, and ``query_pos`` where the chunk's first frame sits
    (frame ``f`` of the chunk is at ``query_pos + f``). Slot tables are shared by the whole batch;
    contents and positions may differ per batch element.

    Two kinds of slots are visible: ``always``, read by every query whatever the selector says, and
    ``local``, the candidates a block selector chooses among. ``regions`` names parts of ``always`` for
    analysis and tests (``BlockMemory`` names its ``"sink"`` and ``"persistent"`` slots); attention
    backends read only ``always`` and ``local``.
    """

    k: "Tensor"  # (B, NS, H, BLK, D) slot pool of this layer
    v: "Tensor"  # (B, NS, H, BLK, D)
    slot_pos: "Tensor"  # (B, NS) float: read-time temporal position of each slot
    slot_frame: "Tensor"  # (B, NS) long: frame index (in the episode) the slot's block came from
    slot_block: "Tensor"  # (B, NS) long: spatial block index within its frame
    always: "Tensor"  # (NA,) long slot ids read by every query
    local: "Tensor"  # (NL,) long slot ids of the cached local window, oldest first
    query_pos: float  # temporal position of the chunk's first frame
    regions: dict = field(default_factory=dict)  # name -> (n,) long slot ids, each a part of ``always``

    def region(self, name: str) -> "Tensor":
        """The slot ids of the region ``name``; a ``KeyError`` naming the regions there are otherwise."""
        if name not in self.regions:
            raise KeyError(f"no region {name!r} in this view; its regions: {', '.join(self.regions) or 'none'}")
        return self.regions[name]

    @property
    def visible(self) -> "Tensor":
        """All visible slot ids in reading order [always ; local], (NV,)."""
        import torch

        return torch.cat([self.always, self.local])


@dataclass
class BlockIndex:
    """Which *local* blocks each query block reads (the view's ``always`` slots are read regardless).

    Local candidates are numbered ``0 .. NL + NQB - 1``: the view's cached local blocks (``view.local``
    order) followed by the chunk's own blocks. Rows are sorted ascending and padded with -1.
    """

    local: "Tensor"  # (B, Hs, NQB, K) long, Hs in {1, H}
    count: "Tensor"  # (B, Hs, NQB) long, number of valid entries per row


class MemoryPolicy(Plugin):
    """Owns the KV cache: what stays visible, and at which temporal position it is read."""

    kind = "memory"

    @abstractmethod
    def reset(self, spec: CacheSpec) -> None:
        """Allocate an empty cache for ``spec`` (bounded policies preallocate their maximum)."""

    @abstractmethod
    def view(self, layer: int) -> KVView:
        """The cached blocks visible to the next chunk at ``layer``."""

    @abstractmethod
    def commit(self, k: "Tensor", v: "Tensor", pooled_q: "Tensor") -> None:
        """Append a finished chunk (its clean pass), then evict / compress / update.

        k, v: (L, B, H, Tc, D) the chunk's keys (no temporal rotation) and values, block-major tokens.
        pooled_q: (L, B, H, NQB, D) the chunk's block-pooled queries (for policies that score blocks).
        """

    @abstractmethod
    def nbytes(self) -> int:
        """Exact bytes of K and V held in slots that are in use."""

    def visibility(self, num_frames: int) -> Optional[tuple["Tensor", "Tensor"]]:
        """The policy as a static mask for parallel (teacher / diffusion forcing) training.

        Returns ``(visible, key_pos)``, both (n_chunks, num_frames): whether query chunk c sees
        frame j (its own chunk included) and at which temporal position it reads it. The query chunk
        c sits at its absolute frame index. ``None`` when visibility depends on the data.
        """
        return None

    def max_read_distance(self) -> Optional[int]:
        """The policy's promise on read positions, after ``reset``: no cached block is read more than this
        many frames before the newest frame of the chunk reading it, at any horizon (at most
        ``spec.train_frames - 1`` keeps every read within what training covered). ``None``: no promise
        (distances may grow with the horizon). ``worldkit.testing.check_memory_policy`` holds a policy to it."""
        return None


class BlockSelector(Plugin):
    """Chooses, per head and query block, which local blocks attention reads."""

    kind = "selector"

    @abstractmethod
    def select(self, pooled_q: "Tensor", pooled_k: "Tensor", own: "Tensor") -> Optional[BlockIndex]:
        """pooled_q: (B, H, NQB, D); pooled_k: (B, H, NL + NQB, D) local candidates (cached window
        then own chunk); own: (NQB,) long, each query block's own candidate index. ``None`` = all."""


class AttentionBackend(Plugin):
    """Computes attention of a chunk over a view of the cache and its own tokens."""

    kind = "attention"

    @abstractmethod
    def attend(
        self,
        q: "Tensor",
        k: "Tensor",
        v: "Tensor",
        view: Optional[KVView],
        index: Optional[BlockIndex],
    ) -> "Tensor":
        """q, k, v: (B, H, Tq, D) the chunk's own tokens, fully rotated. ``view.k`` arrives with its
        temporal rotation already applied. Every query reads ``view.always`` + the local blocks of
        ``index`` (all local blocks and the whole chunk when ``index`` is None). Returns (B, H, Tq, D)."""


class RolloutTrainer(Plugin):
    """Supplies the training loss for a batch of clips."""

    kind = "trainer"

    @abstractmethod
    def loss(self, ctx: Any, batch: dict) -> tuple["Tensor", dict]:
        """The scalar loss for ``batch`` (``frames`` (B, F, 3, H, W) in [-1, 1], ``actions`` (B, F, A)) and
        a dict of scalars to log. ``ctx`` is a ``worldkit.train_context.TrainContext`` (not imported here:
        it reads the schema, which reads this module): the model, its ``memory``, ``selector``,
        ``backend`` and ``rollout``, the stage's ``train`` settings and the seeded ``generator``. When
        ``ctx.training`` is false it is the validation loss, which picks the best
        checkpoint."""

    def data_frames(self, clip_frames: int) -> int:
        """Frames per training clip the loss reads, given ``train.clip_frames`` (default: the clip; a
        trainer that streams past the clip reads more)."""
        return clip_frames

    def check_start(self, init: Any) -> None:
        """Called before a stage trains (not on resume) with the checkpoint it starts from, or None for
        random weights; raise ``WorldkitError`` when the loss cannot work from there."""

    def attach(self, ctx: Any) -> None:
        """Called once when training is set up: add the auxiliary networks the loss needs to ``ctx.aux``
        (an ``nn.ModuleDict``), so they are optimised, checkpointed and resumed with the model. A network
        there with an ``lr_scale`` attribute trains at that multiple of ``train.lr``."""


KINDS: dict[str, type[Plugin]] = {
    "env": Environment,
    "memory": MemoryPolicy,
    "selector": BlockSelector,
    "attention": AttentionBackend,
    "trainer": RolloutTrainer,
}
# The plugins a stage (or variant) may set for itself, and the model-side ones among them.
MODEL_KINDS: tuple[str, ...] = ("memory", "selector", "attention")
STAGE_KINDS: tuple[str, ...] = ("trainer", *MODEL_KINDS)
