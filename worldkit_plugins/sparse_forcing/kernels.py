"""What the Sparse Forcing plugins report after a stage (``Plugin.report``): the Triton paths' choices."""
from __future__ import annotations

from typing import Any

from worldkit_kernels import choices


class ReportsKernels:
    """Mixin of the plugins that run ``worldkit_kernels``: each stage that used one gets ``kernels.json``."""

    @classmethod
    def report(cls) -> dict[str, Any]:
        """``{"kernels.json": ...}`` once the Triton paths ran in this process (a CUDA run), else nothing:
        each PBSA launch configuration kept per problem class with the tuner's timings, and the block
        selection ``impl: auto`` kept, with both timings (``worldkit_kernels.choices``)."""
        kept = choices.kernel_choices()
        return {"kernels.json": kept} if kept["pbsa"] or kept["selection"] else {}
