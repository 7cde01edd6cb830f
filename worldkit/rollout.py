"""The rollout engine: chunk-by-chunk generation against a memory policy's KV cache.

For each chunk the denoising steps read the cache without writing to it; then one more pass over the
clean chunk at noise level 0 commits its keys and values through the memory policy. The same engine
serves inference, evaluation and self-forcing training (``exit_step``: steps before it run without
gradient, the exit step carries gradient, the commit pass is detached).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from worldkit import diffusion
from worldkit.interfaces import AttentionBackend, BlockSelector, MemoryPolicy
from worldkit.model import ChunkContext, WorldModel


@dataclass
class ChunkTiming:
    """Wall time of one chunk, split, and the KV bytes held after its commit."""

    denoise_ms: float
    commit_ms: float
    total_ms: float
    kv_bytes: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Rollout:
    """Generates frames chunk by chunk with one model and one set of memory / selector / backend plugins."""

    def __init__(
        self,
        model: WorldModel,
        memory: MemoryPolicy,
        selector: BlockSelector,
        backend: AttentionBackend,
        steps: int = 4,
        shift: float = 1.0,
        renoise: bool = True,
        train_frames: int = 16,
    ):
        self.model, self.memory, self.selector, self.backend = model, memory, selector, backend
        self.steps, self.shift, self.renoise = steps, shift, renoise
        self.train_frames = train_frames
        self.timings: list[ChunkTiming] = []
        self.hook: Optional[Callable] = None  # ChunkContext hook for denoising passes
        self.commit_hook: Optional[Callable] = None  # ... and for commit passes

    @property
    def chunk_frames(self) -> int:
        return self.model.chunk_frames

    def reset(self, batch: int, dtype=None, device=None) -> None:
        spec = self.model.cache_spec(batch, self.train_frames, dtype=dtype, device=device)
        self.memory.reset(spec)
        self.device = spec.device
        self.timings = []

    def _ctx(self, collect: bool) -> ChunkContext:
        hook = self.commit_hook if collect else self.hook
        return ChunkContext(self.memory, self.selector, self.backend, collect=collect, hook=hook)

    def _commit(self, x0: Tensor, actions: Tensor, level: float = 0.0) -> None:
        """One pass over the chunk at noise ``level`` (0: clean), then hand its K/V to the memory policy."""
        ctx = self._ctx(collect=True)
        levels = torch.full(x0.shape[:2], float(level), device=x0.device, dtype=x0.dtype)
        with torch.no_grad():
            self.model(x0.detach(), levels, actions, ctx)
            self.memory.commit(*ctx.kv_for_commit())

    def commit(self, frames: Tensor, actions: Tensor, level: float = 0.0) -> None:
        """Commit one chunk of frames (B, Fc, C, H, W) as they are, read at noise ``level`` (0: clean;
        above 0 the frames should carry that much noise: context-noise augmentation). Never differentiable."""
        self._commit(frames, actions, level)

    def commit_frames(self, frames: Tensor, actions: Tensor) -> None:
        """Commit ground-truth frames (context) chunk by chunk. frames: (B, F, C, H, W), F a multiple
        of the chunk length; actions: (B, F, A)."""
        fc = self.chunk_frames
        if frames.shape[1] % fc:
            raise ValueError(f"context of {frames.shape[1]} frames is not a whole number of {fc}-frame chunks")
        for i in range(0, frames.shape[1], fc):
            self._commit(frames[:, i : i + fc], actions[:, i : i + fc])

    def read(self, x_t: Tensor, t: Tensor, actions: Tensor) -> Tensor:
        """One denoising pass over a chunk at levels ``t`` (B, Fc) reading the cache, without committing:
        the model's output (differentiable when gradients are on). x_t: (B, Fc, C, H, W)."""
        return self.model(x_t, t, actions, self._ctx(collect=False))

    def levels(self, device=None) -> Tensor:
        """The sampler's noise levels, (steps + 1,) from 1 down to 0."""
        return diffusion.schedule(self.steps, self.shift, device=device)

    def sample(
        self,
        actions: Tensor,
        noise: Optional[Tensor] = None,
        exit_step: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Denoise one chunk from the cache without committing it. actions: (B, Fc, A). Returns the clean
        estimate (B, Fc, C, H, W) at ``exit_step`` (default: the last step); only that step is differentiable."""
        model = self.model
        geo = model.geometry
        B, fc = actions.shape[:2]
        shape = (B, fc, geo.channels, *geo.frame_hw)
        dev = actions.device
        dtype = next(model.parameters()).dtype
        exit_step = self.steps - 1 if exit_step is None else exit_step
        ts = self.levels(device=dev).to(dtype)

        def randn():
            where = dev if generator is None else generator.device
            return torch.randn(shape, generator=generator, device=where, dtype=dtype).to(dev)

        x = randn() if noise is None else noise
        ctx = self._ctx(collect=False)
        for i in range(exit_step + 1):
            t = ts[i].expand(B, fc)
            with torch.set_grad_enabled(torch.is_grad_enabled() and i == exit_step):
                x0 = diffusion.to_x0(model(x, t, actions, ctx), x, t, model.prediction)
            if i < exit_step:
                tn = ts[i + 1].expand(B, fc)
                x = diffusion.step(x0, x, t, tn, randn() if self.renoise else None)
        return x0

    def chunk(
        self,
        actions: Tensor,
        noise: Optional[Tensor] = None,
        exit_step: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        commit: Optional[Tensor] = None,
    ) -> Tensor:
        """Generate and commit one chunk (``sample`` then ``commit``), timed. actions: (B, Fc, A). Returns
        the clean chunk (B, Fc, C, H, W) as estimated at ``exit_step`` (default: the last step); only that
        step is differentiable. ``commit`` (B, Fc, C, H, W): frames the cache takes instead of the generated ones."""
        dev = actions.device
        _sync(dev)
        t0 = time.perf_counter()
        x0 = self.sample(actions, noise=noise, exit_step=exit_step, generator=generator)
        _sync(dev)
        t1 = time.perf_counter()
        self._commit(x0 if commit is None else commit, actions)
        _sync(dev)
        t2 = time.perf_counter()
        self.timings.append(
            ChunkTiming((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t2 - t0) * 1e3, self.memory.nbytes())
        )
        return x0

    def run(
        self,
        context: Tensor,
        actions: Tensor,
        frames: int,
        generator: Optional[torch.Generator] = None,
        progress: Optional[Callable[[int], None]] = None,
        truth: Optional[Tensor] = None,
    ) -> Tensor:
        """Roll out ``frames`` new frames after ``context``.

        context: (B, Fctx, C, H, W) ground-truth frames; actions: (B, Fctx + frames, A) the actions
        that lead to every frame. With ``truth`` (B, frames, C, H, W) each chunk commits the true frames
        instead of its own (teacher forced): every chunk is then a one-chunk forecast from a cache of real
        history. Returns (B, frames, C, H, W)."""
        B, fctx = context.shape[:2]
        if frames % self.chunk_frames:
            raise ValueError(f"frames={frames} is not a whole number of {self.chunk_frames}-frame chunks")
        self.reset(B, dtype=None, device=context.device)
        self.commit_frames(context, actions[:, :fctx])
        fc = self.chunk_frames
        out = []
        with torch.no_grad():
            for s in range(fctx, fctx + frames, fc):
                real = None if truth is None else truth[:, s - fctx : s - fctx + fc]
                out.append(self.chunk(actions[:, s : s + fc], generator=generator, commit=real))
                if progress is not None:
                    progress(fc)
        return torch.cat(out, dim=1)[:, :frames]
