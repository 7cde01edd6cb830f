"""The no-selection baseline: every query block reads every local block."""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from worldkit.interfaces import BlockIndex, BlockSelector, PluginConfig


class AllBlocks(BlockSelector):
    """No selection: every query block reads all local blocks and the whole chunk."""

    class Config(PluginConfig):
        pass

    def select(self, pooled_q: Tensor, pooled_k: Tensor, own: Tensor) -> Optional[BlockIndex]:
        return None
