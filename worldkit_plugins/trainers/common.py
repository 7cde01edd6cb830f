"""What the trainer plugins share: noise levels, the policy's frame mask, the denoising loss."""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from worldkit import diffusion, registry
from worldkit.errors import WorldkitError
from worldkit.interfaces import CacheSpec, PluginConfig
from worldkit.model import Geometry, ParallelContext
from worldkit.train_context import TrainContext


class NoiseConfig(PluginConfig):
    """How training noise levels are drawn."""

    shift: float = Field(1.0, gt=0, description="time shift of the drawn levels (>1 favours high noise)")
    min_level: float = Field(0.0, ge=0, lt=1, description="lowest noise level drawn")


def draw_levels(ctx: TrainContext, shape, cfg: NoiseConfig, generator: torch.Generator) -> Tensor:
    """Noise levels in [min_level, 1], uniformly drawn then time-shifted."""
    u = ctx.rand(shape, generator)
    t = cfg.shift * u / (1 + (cfg.shift - 1) * u)
    return cfg.min_level + (1 - cfg.min_level) * t


def policy_mask(ctx: TrainContext, frames: int) -> tuple[Tensor, Tensor]:
    """The memory policy's visibility per query *frame*: visible (F, F) and key positions (F, F)."""
    fc = ctx.model.chunk_frames
    ctx.memory.reset(ctx.model.cache_spec(1, ctx.train.clip_frames, device=torch.device("cpu")))
    vis = ctx.memory.visibility(frames)
    if vis is None:
        raise WorldkitError(
            f"memory plugin {type(ctx.memory).__name__} decides what is visible from the data, so it has "
            "no mask for parallel training: train it with trainer self_forcing"
        )
    visible, key_pos = vis  # (n_chunks, F) each
    return visible.repeat_interleave(fc, 0)[:frames], key_pos.repeat_interleave(fc, 0)[:frames]


def check_parallel_mask(trainer: str, experiment) -> list[tuple]:
    """Validation of a trainer that runs the clip in parallel under the memory policy's mask: the policy
    must have one (a policy that keeps what the data selects, such as persistent blocks, has none).
    The policy is probed on a one-element cache of the experiment's block layout; a policy that cannot be
    probed so is left to the check when training starts."""
    m = experiment.model
    size = getattr(experiment.env.config, "size", None)
    blocks = Geometry(size, m.patch, m.block_patches).blocks_per_frame if isinstance(size, int) else 1
    spec = CacheSpec(layers=1, batch=1, heads=1, head_dim=1, block_tokens=1, blocks_per_frame=max(1, blocks),
                     chunk_frames=m.chunk_frames, train_frames=experiment.train.clip_frames,
                     dtype=torch.float32, device=torch.device("cpu"))
    try:
        memory = registry.build("memory", experiment.memory)
        memory.reset(spec)
        has_mask = memory.visibility(experiment.train.clip_frames) is not None
    except Exception:
        return []
    if has_mask:
        return []
    return [("type", trainer, f"trains the clip in parallel under the memory policy's mask, and memory "
                              f"{experiment.memory.type} has none (what it keeps depends on the data): train it "
                              "with trainer self_forcing, or pick a memory policy with a fixed layout")]


def denoising_loss(ctx: TrainContext, pred: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """Mean squared error against what the model is trained to output."""
    return (pred.float() - diffusion.target(x0, eps, ctx.model.prediction).float()).pow(2).mean()


def twin_context(visible: Tensor, key_pos: Tensor, chunk: int) -> ParallelContext:
    """The clip twice, clean then noisy, under one mask: clean frames see the clean frames ``visible``
    allows (their own chunk included); a noisy frame sees the same clean past and its own noisy chunk.
    visible, key_pos: (F, F) per query frame. Inputs are ``[clean ; noisy]`` along the frame axis."""
    F = visible.shape[0]
    own = (torch.arange(F)[:, None] // chunk) == (torch.arange(F)[None, :] // chunk)  # same chunk
    past = visible & ~own
    vis2 = torch.cat([torch.cat([visible, torch.zeros_like(visible)], 1), torch.cat([past, own & visible], 1)], 0)
    pos2 = key_pos.repeat(2, 2)  # a clean frame and its noisy twin sit at the same position
    return ParallelContext(vis2, torch.arange(F, dtype=torch.float32).repeat(2), pos2)


def twin_forward(net, clean: Tensor, noisy: Tensor, t: Tensor, actions: Tensor, mask: ParallelContext) -> Tensor:
    """The network over ``[clean ; noisy]`` under a ``twin_context`` mask; its output on the noisy twin.
    clean, noisy: (B, F, 3, H, W); t: (B, F) levels of the noisy frames; actions: (B, F, A)."""
    F = clean.shape[1]
    levels = torch.cat([torch.zeros_like(t), t], 1)
    return net(torch.cat([clean, noisy], 1), levels, torch.cat([actions, actions], 1), mask)[:, F:]
