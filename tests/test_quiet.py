"""A clean console: Lightning's advertisement and the known harmless notices are left out of worldkit's
output, by their exact wording; every other warning and log line is kept."""
import logging
import warnings

import pytest

from worldkit import cli, quiet

HARMLESS = [
    "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead.",
    "Checkpoint directory /tmp/run/stages/0-train/checkpoints exists and is not empty.",
    "You're resuming from a checkpoint that ended before the epoch ended and your dataloader is not resumable. "
    "This can cause unreliable results if further training is done.",
]
REAL = [
    "The loss became NaN at step 3",
    "Checkpoint directory /tmp/x is not writable",  # close to a harmless one, but another message
    "`isinstance(x, Foo)` is deprecated",
]


def test_harmless_warnings_are_left_out_and_real_ones_kept():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet.install()
        for message in HARMLESS + REAL:
            warnings.warn(message, FutureWarning if "LeafSpec" in message else UserWarning)
    assert [str(w.message) for w in seen] == REAL


@pytest.mark.parametrize("logger, message, kept", [
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging and experiment tracking, try "
     "installing [litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs ...", False),
    ("lightning.pytorch.utilities.rank_zero", "\nDetected KeyboardInterrupt, attempting graceful shutdown ...", False),
    ("lightning.pytorch.trainer.connectors.signal_connector", "[rank: 0] Received SIGTERM: 15", False),
    ("lightning.pytorch.utilities.rank_zero", "GPU available: False, used: False", True),
    ("lightning.pytorch.utilities.rank_zero", "`Trainer.fit` stopped: `max_steps=30` reached.", True),
    ("lightning.pytorch.utilities.rank_zero", "Restored all states from the checkpoint at last.ckpt", True),
])
def test_lightnings_advertisement_and_stop_notices_are_left_out(logger, message, kept, caplog):
    quiet.install()
    with caplog.at_level(logging.INFO, logger=logger):
        logging.getLogger(logger).info(message)
    assert [r.getMessage() for r in caplog.records] == ([message] if kept else [])


def test_the_cli_installs_it(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(quiet, "install", lambda: calls.append(1))
    cli.main(["plugins", "--kind", "memory"])
    assert calls == [1]
