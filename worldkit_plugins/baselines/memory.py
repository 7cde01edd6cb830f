"""Baseline memory policies: keep everything, keep a sliding window, keep a sink and a window."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from worldkit.cache import BlockMemory, Layout
from worldkit.interfaces import CacheSpec, PluginConfig


def _history(window_frames: Optional[int], spec: CacheSpec, field: str) -> int:
    """Cached frames behind the chunk for a window of ``window_frames`` (None = the training clip)."""
    w = spec.train_frames if window_frames is None else window_frames
    if w < spec.chunk_frames:
        raise ValueError(
            f"{field}={w} must be at least the chunk length ({spec.chunk_frames} frames): "
            "the window includes the chunk being generated"
        )
    return w - spec.chunk_frames


def _window_problems(window_frames: Optional[int], experiment) -> list:
    """A window set explicitly must hold the chunk being generated (a default one is the clip, which does)."""
    chunk = experiment.model.chunk_frames
    if window_frames is not None and window_frames < chunk:
        return [("window_frames", window_frames, f"must be at least the chunk length (model.chunk_frames={chunk}): "
                                                 "the window includes the chunk being generated")]
    return []


class Dense(BlockMemory):
    """Keep every committed block (memory and time grow with the horizon)."""

    class Config(PluginConfig):
        pass

    def layout(self, spec):
        return Layout(sink_frames=0, history_frames=None, persistent_blocks=0)


class SlidingWindow(BlockMemory):
    """Keep the last W frames (the chunk being generated included); Self-Forcing's rolling cache."""

    class Config(PluginConfig):
        window_frames: Optional[int] = Field(
            None, ge=1, description="frames visible, the current chunk included; default: the training clip"
        )

    def layout(self, spec):
        return Layout(history_frames=_history(self.config.window_frames, spec, "memory.window_frames"))

    def max_read_distance(self):
        """The window's oldest frame, read at its own index by the chunk's newest."""
        return self.history_frames + self.spec.chunk_frames - 1

    @classmethod
    def check(cls, config, experiment):
        return _window_problems(config.window_frames, experiment)


class Sink(BlockMemory):
    """Keep the first S frames (attention sink) and the last W frames."""

    class Config(PluginConfig):
        sink_frames: int = Field(2, ge=1, description="first frames kept for ever")
        window_frames: Optional[int] = Field(
            None, ge=1, description="recent frames visible, the current chunk included; default: training clip minus the sink"
        )
        sink_position: Literal["before_window", "absolute"] = Field(
            "before_window",
            description="read the sink just before the window (distances stay bounded) or at its true frame index",
        )

    @classmethod
    def check(cls, config, experiment):
        return _window_problems(config.window_frames, experiment)

    def layout(self, spec):
        w = self.config.window_frames
        if w is None:
            w = max(spec.chunk_frames, spec.train_frames - self.config.sink_frames)
        return Layout(sink_frames=self.config.sink_frames, history_frames=_history(w, spec, "memory.window_frames"))

    def sink_shift(self, query_frame: int) -> float:
        if self.config.sink_position == "absolute":
            return 0.0
        start = max(self.sink_frames, query_frame - self.history_frames)  # oldest visible window frame
        return float(max(0, start - self.sink_frames))

    def max_read_distance(self):
        """before_window: the window, then the sink just before it; absolute: unbounded."""
        if self.config.sink_position == "absolute":
            return None
        return self.history_frames + self.spec.chunk_frames - 1 + self.sink_frames
