"""Sparse Forcing's local-window selector: per query block, the top-K local blocks by pooled score."""
from __future__ import annotations

from typing import Literal, Union

from pydantic import Field, StrictFloat, StrictInt, field_validator
from torch import Tensor

from worldkit.interfaces import BlockIndex, BlockSelector, PluginConfig
from worldkit_kernels import resolve_top_k, topk_blocks


class LocalWindow(BlockSelector):
    """Top-K local blocks per query block by softmax(pooled q . pooled k / sqrt(d)); own block kept."""

    class Config(PluginConfig):
        top_k: Union[StrictInt, StrictFloat] = Field(
            0.25, description="a fraction of the candidates (a float in (0, 1]: 1.0 = all) or a count (an int >= 1: 1 = one block)")
        shared_heads: bool = False  # scores summed over heads: one list per query block
        keep_own: bool = True  # each query block always reads its own block (counted inside K)
        impl: Literal["auto", "torch", "triton"] = Field(
            "auto", description="torch: a few PyTorch ops; triton: one fused kernel (scores, softmax, top-K) "
                                "for a head dim that is a power of two >= 16, the PyTorch ops past 2048 "
                                "candidates; auto: on CUDA, whichever of the two was faster when timed on the "
                                "first call of each problem class, else torch (benchmarks/kernel_bench.py "
                                "times both)")

        @field_validator("top_k")
        @classmethod
        def _top_k_range(cls, value: Union[int, float]) -> Union[int, float]:
            if isinstance(value, float) and not 0.0 < value <= 1.0:
                raise ValueError(f"a fraction top_k must be in (0, 1]; got {value}")
            if isinstance(value, int) and value < 1:
                raise ValueError(f"a count top_k must be >= 1; got {value}")
            return value

    def select(self, pooled_q: Tensor, pooled_k: Tensor, own: Tensor) -> BlockIndex:
        k = resolve_top_k(self.config.top_k, pooled_k.shape[2])
        forced = own if self.config.keep_own else None
        select = topk_blocks
        impl = self.config.impl
        if impl == "auto" and not pooled_q.is_cuda:  # Triton is not imported off CUDA
            impl = "torch"
        if impl != "torch":
            from worldkit_kernels import topk_triton  # imported on first use

            if impl == "auto":
                select = topk_triton.topk_blocks_auto
            elif pooled_k.shape[2] <= topk_triton.MAX_CANDIDATES:  # a longer window: the PyTorch ops
                select = topk_triton.topk_blocks_triton
        index, count = select(pooled_q, pooled_k, k, forced=forced, shared_heads=self.config.shared_heads)
        return BlockIndex(local=index, count=count)
