"""A clean console: notices from the libraries worldkit runs on that say nothing about the run are left
out of worldkit's output; every other warning is kept.

Left out, each by its exact wording (``install``, called by the CLI):

- Lightning's advertisement of its cloud logger ("Tip: ... litlogger");
- torch's deprecation of ``LeafSpec``, which Lightning's own code triggers;
- on a resumed stage, Lightning's notes that the checkpoint folder is not empty (it is the stage's own)
  and that the dataloader "is not resumable" (worldkit's sampler resumes its order from the step);
- on Ctrl-C or SIGTERM, Lightning's "Detected KeyboardInterrupt" and "Received SIGTERM" lines (worldkit
  says how the run stopped and how to resume it).
"""
from __future__ import annotations

import logging
import re
import warnings

HARMLESS_WARNINGS = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Checkpoint directory .* exists and is not empty",
    r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable",
)
HARMLESS_LOG_LINES = (
    r"💡 Tip: For seamless cloud logging and experiment tracking, try installing \[litlogger\]",
    r"\s*Detected KeyboardInterrupt, attempting graceful shutdown",
    r"(\[rank: \d+\] )?Received SIGTERM: \d+",
)
LIGHTNING_LOGGERS = (  # where those lines are logged
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.trainer.connectors.signal_connector",
)


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(re.match(p, message) for p in HARMLESS_LOG_LINES)


_FILTER = _DropHarmless()


def install() -> None:
    """Leave the harmless notices out from now on, in this process (idempotent)."""
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
