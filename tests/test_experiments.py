"""The shipped experiment YAMLs validate against the real built-in plugins."""
from pathlib import Path

import pytest

from worldkit import config


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_validates(path):
    cfg = config.load(path)
    assert cfg.name


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_starts_from_a_shipped_checkpoint(path):
    from worldkit.experiment import resolve_init

    cfg = config.load(path)
    if cfg.model.init is not None:
        assert resolve_init(cfg.model.init).exists()


def test_main_experiment_compares_sparse_forcing_with_the_self_forcing_baseline():
    cfg = config.load(Path(__file__).parents[1] / "experiments" / "sparse_forcing.yaml")
    assert (cfg.memory.type, cfg.selector.type, cfg.attention.type, cfg.trainer.type) == (
        "persistent_block", "local_window", "pbsa", "self_forcing")
    assert cfg.model.init == "base/pendulum"
    assert [s.name for s in cfg.stages] == ["sparse_self_forcing"] and cfg.stages[0].memory is None
    (base,) = cfg.compare
    assert base.memory.type == "sliding_window" and base.memory.config.window_frames == cfg.train.clip_frames
    assert base.trainer.type == "self_forcing" and not base.train
