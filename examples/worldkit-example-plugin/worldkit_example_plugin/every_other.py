"""The ``every_other`` memory policy: keep every other committed chunk, at most ``max_chunks`` of them.

A third-party memory policy on worldkit's block-paged cache (``worldkit.cache.BlockMemory``): it fills in
two hooks, the layout and which chunks enter the cache; the cache, its views, its bytes and the training
mask (``visibility``, replayed from the hooks) are worldkit's.
"""
from __future__ import annotations

from pydantic import Field

from worldkit.cache import BlockMemory, Layout
from worldkit.interfaces import CacheSpec, PluginConfig


class EveryOther(BlockMemory):
    """Keep every other committed chunk (0, 2, 4, ...), at most max_chunks of them (example plugin)."""

    class Config(PluginConfig):
        max_chunks: int = Field(4, ge=1, description="chunks kept at most; the oldest kept one is evicted")

    def layout(self, spec: CacheSpec) -> Layout:
        """No sink, a local window of ``max_chunks`` chunks, no persistent blocks."""
        return Layout(sink_frames=0, history_frames=self.config.max_chunks * spec.chunk_frames, persistent_blocks=0)

    def keeps_chunk(self, chunk: int) -> bool:
        """Even chunks enter the cache; odd ones only advance time."""
        return chunk % 2 == 0

    def max_read_distance(self) -> int:
        """Blocks are read at their own frame: the oldest kept chunk starts 2 * max_chunks chunks back."""
        return (2 * self.config.max_chunks + 1) * self.spec.chunk_frames - 1
