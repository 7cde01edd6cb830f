"""Sparse Forcing's memory: sink + persistent block memory P + local window, under one softmax.

When the window slides, the blocks leaving it (E) join P as candidates; every block of P u E is scored
by block-level attention from the current chunk's pooled queries (softmax over the candidates per
head and query block, summed over query blocks and heads) and the top C are kept, per layer and batch
element: ``P <- TopC(P u E)``. What is dropped is gone. P holds clean K/V (commits are clean passes),
changes once per chunk, and is fixed during the denoising steps. The scores are position-free: pooled
queries and keys carry their spatial rotation but not the temporal one (the cache keeps keys unrotated
and assigns temporal positions at read time), so a block's score depends on its content, not its age.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from pydantic import Field
from torch import Tensor

from worldkit.cache import BlockMemory, Blocks, Layout
from worldkit.interfaces import CacheSpec, PluginConfig


def score_candidates(pooled_q: Tensor, cand_k: Tensor) -> Tensor:
    """Block-level attention mass each candidate receives from the chunk's pooled queries.

    pooled_q: (L, B, H, NQB, D); cand_k: (L, B, n, H, D) pooled candidate keys -> (L, B, n)."""
    d = pooled_q.shape[-1]
    logits = torch.einsum("lbhqd,lbnhd->lbhqn", pooled_q.float(), cand_k.float()) / math.sqrt(d)
    return logits.softmax(-1).sum((2, 3))


class PersistentBlock(BlockMemory):
    """Sink frames + top-C persistent blocks scored by attention + a local window of recent frames."""

    class Config(PluginConfig):
        sink_frames: int = Field(1, ge=0, description="first frames kept for ever")
        persistent_frames: float = Field(
            6.0, gt=0, description="capacity C of the persistent memory, in frames' worth of blocks"
        )
        persistent_blocks: Optional[int] = Field(None, ge=1, description="capacity C in blocks (overrides persistent_frames)")
        window_frames: int = Field(6, ge=1, description="recent frames visible, the current chunk included")
        pooling: Literal["mean", "max"] = Field("mean", description="how a candidate block's keys are pooled for scoring")
        position: Literal["before_window", "absolute", "ordered"] = Field(
            "before_window",
            description="where P (and the sink, before it) is read: all of P one frame before the window; at "
                        "true frame indices; or ordered: P's frames in their order, newest just before the "
                        "window, one position apart, the sink before the most P can hold (distances bounded)",
        )

    @classmethod
    def check(cls, config, experiment):
        chunk = experiment.model.chunk_frames
        if config.window_frames < chunk:
            return [("window_frames", config.window_frames,
                     f"must be at least the chunk length (model.chunk_frames={chunk}): the window includes the chunk")]
        return []

    def layout(self, spec: CacheSpec) -> Layout:
        c = self.config
        if c.window_frames < spec.chunk_frames:
            raise ValueError(
                f"memory.window_frames={c.window_frames} must be at least the chunk length ({spec.chunk_frames} frames)"
            )
        cap = c.persistent_blocks or max(1, round(c.persistent_frames * spec.blocks_per_frame))
        return Layout(c.sink_frames, c.window_frames - spec.chunk_frames, cap)

    # ---- P <- TopC(P u E) -----------------------------------------------------------------------
    def on_evict(self, evicted: Blocks, pooled_q: Tensor) -> None:
        cand = self.persistent().cat(evicted)  # P u E: k (L, B, n_c, H, BLK, D), frame (L, B, n_c)
        pooled = cand.k.mean(4) if self.config.pooling == "mean" else cand.k.amax(4)  # (L, B, n_c, H, D)
        scores = score_candidates(pooled_q.to(pooled.device), pooled)  # (L, B, n_c)
        keep = min(self.persistent_cap, scores.shape[2])
        top = scores.topk(keep, dim=2).indices.sort(dim=2).values  # (L, B, keep), candidate order kept
        self.keep_persistent(cand.take(top))

    # ---- read-time positions --------------------------------------------------------------------
    def _window_start(self) -> int:
        return max(self.sink_frames, self.frames_seen - self.history_frames)

    def persistent_pos(self, layer: int, frame_pos: Tensor) -> Tensor:
        if self.config.position == "absolute":
            return frame_pos
        start = float(self._window_start())
        if self.config.position == "ordered":
            return start - 1 - newer_frames(frame_pos)  # (B, n): the newest frame just before the window
        return torch.full_like(frame_pos, start - 1)  # one frame before the window

    def _gap(self) -> int:
        """The positions P may occupy: one frame (before_window), or one per block it can hold (ordered)."""
        return 0 if not self.persistent_cap else self.persistent_cap if self.config.position == "ordered" else 1

    def sink_shift(self, query_frame: int) -> float:
        if self.config.position == "absolute":
            return 0.0
        return float(max(0, self._window_start() - self._gap() - self.sink_frames))

    def max_read_distance(self) -> Optional[int]:
        """The window, then P's positions, then the sink, all before the chunk (absolute: unbounded)."""
        if self.config.position == "absolute":
            return None
        return self.history_frames + self.spec.chunk_frames - 1 + self._gap() + self.sink_frames


def newer_frames(frame_pos: Tensor) -> Tensor:
    """Per entry, how many distinct frames of its row are newer: (B, n) -> (B, n) float (0 = the newest)."""
    newer = frame_pos[:, None, :] > frame_pos[:, :, None]  # (B, n, n): entry j newer than entry i
    # count each distinct newer frame once: at the first entry of the row that holds it
    same = frame_pos[:, :, None] == frame_pos[:, None, :]  # (B, n, n)
    earlier = torch.ones(frame_pos.shape[1], frame_pos.shape[1], dtype=torch.bool, device=frame_pos.device).tril(-1)
    first = ~(same & earlier[None]).any(-1)  # (B, n): entry is the first of its frame in the row
    return (newer & first[:, None, :]).sum(-1).to(frame_pos.dtype)
