"""What the trainer plugins share: noise levels, the policy's frame mask, the denoising loss."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from worldkit import diffusion
from worldkit.errors import WorldkitError
from worldkit.interfaces import PluginConfig


class NoiseConfig(PluginConfig):
    """How training noise levels are drawn."""

    shift: float = Field(1.0, gt=0, description="time shift of the drawn levels (>1 favours high noise)")
    min_level: float = Field(0.0, ge=0, lt=1, description="lowest noise level drawn")


def draw_levels(module, shape, cfg: NoiseConfig, generator: torch.Generator) -> Tensor:
    """Noise levels in [min_level, 1], uniformly drawn then time-shifted."""
    u = module.rand(shape, generator)
    t = cfg.shift * u / (1 + (cfg.shift - 1) * u)
    return cfg.min_level + (1 - cfg.min_level) * t


def policy_mask(module, frames: int) -> tuple[Tensor, Tensor]:
    """The memory policy's visibility per query *frame*: visible (F, F) and key positions (F, F)."""
    fc = module.model.chunk_frames
    module.memory.reset(module.model.cache_spec(1, module.train_cfg["clip_frames"], device=torch.device("cpu")))
    vis = module.memory.visibility(frames)
    if vis is None:
        raise WorldkitError(
            f"memory plugin {type(module.memory).__name__} decides what is visible from the data, so it has "
            "no mask for parallel training: train it with trainer self_forcing"
        )
    visible, key_pos = vis  # (n_chunks, F) each
    return visible.repeat_interleave(fc, 0)[:frames], key_pos.repeat_interleave(fc, 0)[:frames]


def denoising_loss(module, pred: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """Mean squared error against what the model is trained to output."""
    return (pred.float() - diffusion.target(x0, eps, module.model.prediction).float()).pow(2).mean()
