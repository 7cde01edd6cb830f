"""Diffusion forcing: an independent noise level per frame (or chunk), the whole clip in parallel."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from worldkit import diffusion
from worldkit.interfaces import RolloutTrainer
from worldkit.train_context import TrainContext
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

    def loss(self, ctx: TrainContext, batch: dict):
        x, a = batch["frames"], batch["actions"]  # (B, F, 3, H, W), (B, F, A)
        B, F = x.shape[:2]
        fc = ctx.model.chunk_frames
        g = ctx.generator()
        if self.config.per == "frame":
            t = draw_levels(ctx, (B, F), self.config, g)
        else:
            t = draw_levels(ctx, (B, -(-F // fc)), self.config, g).repeat_interleave(fc, 1)[:, :F]
        eps = ctx.randn(x.shape, g)
        if self.config.action_dropout > 0 and ctx.training:
            keep = ctx.rand((B, 1, 1), ctx.generator(4)) >= self.config.action_dropout
            a = a * keep.to(a.dtype)
        visible, key_pos = policy_mask(ctx, F)
        mask = ParallelContext(visible, torch.arange(F, dtype=torch.float32), key_pos)
        pred = ctx.model(diffusion.add_noise(x, eps, t), t, a, mask)
        return denoising_loss(ctx, pred, x, eps), {}
