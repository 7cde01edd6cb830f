"""The ``every_other`` memory policy: keep every other committed chunk, at most ``max_chunks`` of them.

A small example of a third-party memory policy. It reuses worldkit's block-paged cache
(``worldkit.cache.BlockMemory``, core, public) and only decides what enters the cache:
chunks 0, 2, 4, ... are kept, 1, 3, 5, ... are dropped, and once ``max_chunks`` are kept the
oldest is evicted. Cached blocks are read at their own frame index, so a kept chunk is at most
``2 * max_chunks * chunk_frames`` frames behind the chunk being generated.
"""
from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from worldkit.cache import BlockMemory
from worldkit.interfaces import CacheSpec, PluginConfig


class EveryOther(BlockMemory):
    """Keep every other committed chunk (0, 2, 4, ...), at most max_chunks of them (example plugin)."""

    class Config(PluginConfig):
        max_chunks: int = Field(4, ge=1, description="chunks kept at most; the oldest kept one is evicted")

    def layout(self, spec: CacheSpec) -> tuple[int, int, int]:
        """No sink, a local ring of ``max_chunks`` chunks, no persistent blocks."""
        return 0, self.config.max_chunks * spec.chunk_frames, 0

    def commit(self, k: Tensor, v: Tensor, pooled_q: Tensor) -> None:
        """k, v: (L, B, H, Tc, D). Even chunks go to the ring; odd ones only advance time."""
        spec = self.spec
        chunk = self.frames_seen // spec.chunk_frames
        if chunk % 2 == 0:
            super().commit(k, v, pooled_q)
        else:
            self.frames_seen += k.shape[3] // (spec.block_tokens * spec.blocks_per_frame)

    def visibility(self, num_frames: int) -> tuple[Tensor, Tensor]:
        """Chunk c sees its own frames and the last ``max_chunks`` even chunks before it, each
        at its own frame index (the same view ``view()`` gives during a rollout)."""
        fc = self.spec.chunk_frames
        n_chunks = -(-num_frames // fc)
        chunk_of = torch.arange(num_frames) // fc  # (T,) chunk index of every frame
        visible = torch.zeros(n_chunks, num_frames, dtype=torch.bool)  # (C, T)
        for c in range(n_chunks):
            kept = [j for j in range(0, c, 2)][-self.config.max_chunks:]
            visible[c] = (chunk_of == c) | torch.isin(chunk_of, torch.tensor(kept, dtype=torch.long))
        key_pos = torch.arange(num_frames, dtype=torch.float32).repeat(n_chunks, 1)  # (C, T)
        return visible, key_pos
