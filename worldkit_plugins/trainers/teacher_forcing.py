"""Teacher forcing: every chunk denoised from clean ground-truth context, all chunks in parallel."""
from __future__ import annotations

from worldkit import diffusion
from worldkit.interfaces import RolloutTrainer
from worldkit.train_context import TrainContext
from worldkit_plugins.trainers.common import check_parallel_mask, NoiseConfig, denoising_loss, draw_levels, policy_mask, twin_context, twin_forward


class TeacherForcing(RolloutTrainer):
    """Clean context, noisy target chunk; the clip twice (clean, then noisy) under one mask."""

    class Config(NoiseConfig):
        pass

    @classmethod
    def check(cls, config, experiment):
        return check_parallel_mask("teacher_forcing", experiment)

    def loss(self, ctx: TrainContext, batch: dict):
        x, a = batch["frames"], batch["actions"]  # (B, F, 3, H, W), (B, F, A)
        B, F = x.shape[:2]
        fc = ctx.model.chunk_frames
        g = ctx.generator()
        t = draw_levels(ctx, (B, -(-F // fc)), self.config, g).repeat_interleave(fc, 1)[:, :F]  # (B, F)
        eps = ctx.randn(x.shape, g)
        visible, key_pos = policy_mask(ctx, F)  # (F, F): what a chunk sees, its own chunk included
        mask = twin_context(visible, key_pos, fc)
        pred = twin_forward(ctx.model, x, diffusion.add_noise(x, eps, t), t, a, mask)
        return denoising_loss(ctx, pred, x, eps), {}
