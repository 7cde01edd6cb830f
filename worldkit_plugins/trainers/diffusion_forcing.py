"""Diffusion forcing: an independent noise level per frame (or chunk), the whole clip in parallel."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from worldkit import diffusion
from worldkit.interfaces import RolloutTrainer
from worldkit.model import ParallelContext
from worldkit_plugins.trainers.common import check_parallel_mask, NoiseConfig, denoising_loss, draw_levels, policy_mask


class DiffusionForcing(RolloutTrainer):
    """Independent noise level per frame or chunk; parallel over the clip under the policy's mask."""

    class Config(NoiseConfig):
        per: Literal["frame", "chunk"] = Field("frame", description="draw one noise level per frame or per chunk")
        action_dropout: float = Field(0.0, ge=0, lt=1, description="chance that a clip's actions are zeroed, so the "
                                                                   "model also learns the unconditional score "
                                                                   "(for classifier-free action guidance)")

    @classmethod
    def check(cls, config, experiment):
        return check_parallel_mask("diffusion_forcing", experiment)

    def loss(self, module, batch):
        x, a = batch["frames"], batch["actions"]  # (B, F, 3, H, W), (B, F, A)
        B, F = x.shape[:2]
        fc = module.model.chunk_frames
        g = module.generator()
        if self.config.per == "frame":
            t = draw_levels(module, (B, F), self.config, g)
        else:
            t = draw_levels(module, (B, -(-F // fc)), self.config, g).repeat_interleave(fc, 1)[:, :F]
        eps = module.randn(x.shape, g)
        if self.config.action_dropout > 0 and module.training:
            keep = module.rand((B, 1, 1), module.generator(4)) >= self.config.action_dropout
            a = a * keep.to(a.dtype)
        visible, key_pos = policy_mask(module, F)
        ctx = ParallelContext(visible, torch.arange(F, dtype=torch.float32), key_pos)
        pred = module.model(diffusion.add_noise(x, eps, t), t, a, ctx)
        return denoising_loss(module, pred, x, eps), {}
