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
        self._clock = clock  # what says training / global_step / _micro (the WorldModule); None: validation at step 0

    @classmethod
    def of(cls, model: "WorldModel", memory: "MemoryPolicy", selector: "BlockSelector", backend: "AttentionBackend",
           train: Optional[TrainConfig] = None, seed: int = 0, steps: Optional[int] = None,
           shift: Optional[float] = None, training: bool = False, step: int = 0) -> "TrainContext":
        """A context around a bare model and plugins, without Lightning: at optimizer step ``step``, in
        training mode when ``training`` (the training loss) or not (the validation loss). ``steps`` and
        ``shift`` are the sampler's (default: the experiment schema's). A trainer's ``attach(ctx)`` adds
        the networks it needs to ``ctx.aux``."""
        from types import SimpleNamespace

        from worldkit.rollout import Rollout
        from worldkit.schema import ModelConfig

        defaults = ModelConfig.model_fields
        steps = defaults["sampler_steps"].default if steps is None else steps
        shift = defaults["shift"].default if shift is None else shift
        train = train or TrainConfig()
        rollout = Rollout(model, memory, selector, backend, steps=steps, shift=shift, train_frames=train.clip_frames)
        clock = SimpleNamespace(training=training, global_step=step, _micro=0)
        return cls(model, memory, selector, backend, rollout, train, seed, clock=clock)

    @property
    def training(self) -> bool:
        """True in a training step, false in validation (the loss is then the validation loss)."""
        return bool(self._clock is not None and self._clock.training)

    @property
    def step(self) -> int:
        """The optimizer steps completed (0 before a Lightning trainer is attached)."""
        return int(self._clock.global_step) if self._clock is not None else 0

    @property
    def device(self) -> torch.device:
        """Where the step runs: the Lightning module's device, else the model's."""
        device = getattr(self._clock, "device", None)
        return device if isinstance(device, torch.device) else next(self.model.parameters()).device

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
