"""What a trainer plugin works with: the world model and its plugins, the typed training settings and
reproducible randomness, without the Lightning module around them.

``WorldModule`` (``worldkit.training``) holds one ``TrainContext`` and hands it to the trainer plugin's
``attach`` and ``loss``; a test or a notebook can build one around a bare model with ``TrainContext.of``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor, nn

from worldkit.schema import TrainConfig

if TYPE_CHECKING:
    from worldkit.interfaces import AttentionBackend, BlockSelector, MemoryPolicy
    from worldkit.model import WorldModel
    from worldkit.rollout import Rollout


class TrainContext:
    """The model, its memory / selector / attention plugins, the rollout that runs them, the networks a
    trainer adds (``aux``), ``train`` (the stage's ``TrainConfig``), and where the step stands
    (``training``, ``step``, ``device``). Every random draw comes from ``generator(salt)``, seeded by
    (seed, step, micro-batch, salt), so a resumed run draws what an uninterrupted one would."""

    def __init__(self, model: "WorldModel", memory: "MemoryPolicy", selector: "BlockSelector",
                 backend: "AttentionBackend", rollout: "Rollout", train: TrainConfig, seed: int,
                 aux: Optional[nn.ModuleDict] = None, clock: Any = None):
        self.model, self.memory, self.selector, self.backend = model, memory, selector, backend
        self.rollout, self.train, self.seed = rollout, train, seed
        self.aux = aux if aux is not None else nn.ModuleDict()  # a trainer's own networks, optimised with the model
        self._clock = clock  # reports training / step / micro; None: evaluation mode at step 0

    @classmethod
    def of(cls, model: "WorldModel", memory: "MemoryPolicy", selector: "BlockSelector", backend: "AttentionBackend",
           train: Optional[TrainConfig] = None, seed: int = 0, steps: int = 4, shift: float = 1.0) -> "TrainContext":
        """A context around a bare model and plugins (no Lightning): in evaluation mode at step 0."""
        from worldkit.rollout import Rollout

        train = train or TrainConfig()
        rollout = Rollout(model, memory, selector, backend, steps=steps, shift=shift, train_frames=train.clip_frames)
        return cls(model, memory, selector, backend, rollout, train, seed)

    @property
    def training(self) -> bool:
        """True in a training step, false in validation (the loss is then the validation loss)."""
        return bool(self._clock is not None and self._clock.training)

    @property
    def step(self) -> int:
        """The optimizer steps completed."""
        return int(self._clock.global_step) if self._clock is not None and self._clock._trainer is not None else 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded by (seed, step, micro-batch, salt): draws are reproducible across resumes,
        and the micro-batches of one accumulated step draw differently."""
        micro = getattr(self._clock, "_micro", 0)
        key = (self.seed, self.step, salt, self.training) + ((micro,) if micro else ())
        return torch.Generator().manual_seed(hash(key) % 2**62)

    def randn(self, shape, generator: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=generator).to(self.device)

    def rand(self, shape, generator: torch.Generator) -> Tensor:
        return torch.rand(shape, generator=generator).to(self.device)
