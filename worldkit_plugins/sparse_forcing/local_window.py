"""Sparse Forcing's local-window selector: per query block, the top-K local blocks by pooled score."""
from __future__ import annotations

from typing import Literal, Union

import torch
from pydantic import Field, StrictFloat, StrictInt, field_validator
from torch import Tensor

from worldkit.interfaces import BlockIndex, BlockSelector, PluginConfig
from worldkit_kernels import resolve_top_k, topk_blocks
from worldkit_plugins.sparse_forcing.kernels import ReportsKernels


class LocalWindow(ReportsKernels, BlockSelector):
    """Top-K local blocks per query block by softmax(pooled q . pooled k / sqrt(d)); own block kept."""

    class Config(PluginConfig):
        top_k: Union[StrictInt, StrictFloat] = Field(
            0.25, description="a fraction of the candidates (a float in (0, 1]: 1.0 = all) or a count (an int >= 1: 1 = one block)")
        shared_heads: bool = False  # scores summed over heads: one list per query block
        keep_own: bool = True  # each query block always reads its own block (counted inside K)
        keep_chunk: bool = Field(
            False, description="every query block reads all blocks of the chunk being generated, and top_k "
                               "selects among the cached window's blocks only (a fraction is of those); keep_own "
                               "is then implied")
        impl: Literal["auto", "torch", "triton"] = Field(
            "auto", description="torch: a few PyTorch ops; triton: one fused kernel (scores, softmax, top-K) "
                                "for a head dim that is a power of two >= 16, the PyTorch ops past 2048 "
                                "candidates; auto: on CUDA, the kernel where its lists pass a check and it "
                                "ran clearly faster when both were timed on the first call of the problem's "
                                "class, else torch (also off CUDA, without Triton, or with "
                                "WORLDKIT_PBSA_TUNE=0); the choice is in each stage's kernels.json. The two agree "
                                "up to rounding (the PyTorch ops may run in TF32) and ties, and auto may choose "
                                "differently in another run: pin one for reproducible selection. "
                                "benchmarks/kernel_bench.py times both")

        @field_validator("top_k")
        @classmethod
        def _top_k_range(cls, value: Union[int, float]) -> Union[int, float]:
            if isinstance(value, float) and not 0.0 < value <= 1.0:
                raise ValueError(f"a fraction top_k must be in (0, 1]; got {value}")
            if isinstance(value, int) and value < 1:
                raise ValueError(f"a count top_k must be >= 1; got {value}")
            return value

    def select(self, pooled_q: Tensor, pooled_k: Tensor, own: Tensor) -> BlockIndex:
        c = self.config
        # keep_chunk: top-K among the cached candidates only; the chunk's own blocks (``own``, the last
        # NQB candidates, ascending) follow them. Their count comes from the shapes: no device sync.
        cached = pooled_k.shape[2] - pooled_q.shape[2]
        cand = pooled_k[:, :, :cached] if c.keep_chunk else pooled_k
        forced = own if c.keep_own and not c.keep_chunk else None
        with torch.no_grad():  # lists of indices: nothing to differentiate, so no graph is recorded
            index, count = topk_blocks(pooled_q, cand, resolve_top_k(c.top_k, cand.shape[2]), forced=forced,
                                       shared_heads=c.shared_heads, impl=c.impl)
            if c.keep_chunk:  # then the whole chunk: cached indices sit below the chunk's, rows stay ascending
                chunk = own.to(index).expand(*index.shape[:3], own.numel())
                index, count = torch.cat([index, chunk], dim=-1), count + own.numel()
        return BlockIndex(local=index, count=count)
