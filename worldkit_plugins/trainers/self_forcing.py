"""Self forcing: the model rolls itself out through the inference engine and is trained on what it made."""
from __future__ import annotations

import torch
from pydantic import Field

from worldkit.interfaces import PluginConfig, RolloutTrainer


class SelfForcing(RolloutTrainer):
    """Self rollout through the inference engine; gradient only at a random exit step per chunk.

    Chunk by chunk with the same cache, memory policy, selector and attention backend as inference;
    the loss compares each chunk's clean estimate at its exit step with the ground-truth frames."""

    class Config(PluginConfig):
        context_frames: int = Field(2, ge=1, description="ground-truth frames committed before the rollout")

    def loss(self, module, batch):
        x, a = batch["frames"], batch["actions"]  # (B, F, 3, H, W), (B, F, A)
        B, F = x.shape[:2]
        fc = module.model.chunk_frames
        ctx = self.config.context_frames
        if ctx % fc or ctx >= F:
            raise ValueError(f"trainer.context_frames={ctx} must be a multiple of the chunk ({fc}) below the clip ({F})")
        g = module.generator()
        rollout = module.rollout
        rollout.reset(B, device=x.device)
        rollout.commit_frames(x[:, :ctx], a[:, :ctx])
        losses, exits = [], []
        for s in range(ctx, F, fc):
            exit_step = int(torch.randint(rollout.steps, (1,), generator=g))
            x0 = rollout.chunk(a[:, s : s + fc], exit_step=exit_step, generator=g)  # (B, fc, 3, H, W)
            losses.append((x0.float() - x[:, s : s + fc].float()).pow(2).mean())
            exits.append(exit_step)
        loss = torch.stack(losses).mean()
        return loss, {"mean_exit_step": float(sum(exits)) / len(exits)}
