"""The shipped experiment YAMLs validate against the real built-in plugins."""
import json
from pathlib import Path

import pytest
import torch

from worldkit import config


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_validates(path):
    cfg = config.load(path)
    assert cfg.name


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_experiment_starts_from_a_shipped_checkpoint(path):
    from worldkit.checkpoints import resolve_init

    cfg = config.load(path)
    if cfg.model.init is not None:
        assert resolve_init(cfg.model.init).exists()


MAIN = Path(__file__).parents[1] / "experiments" / "self_forcing_pendulum.yaml"  # trains Sparse Forcing natively


@pytest.mark.parametrize("override, path", [
    ("memory.window_frames=1", "memory.window_frames"),  # persistent_block
    ("compare[0].memory.window_frames=1", "compare[0].memory.window_frames"),  # sliding_window
    ("memory={type: sink, window_frames: 1}", "memory.window_frames"),
    ("compare[0].trainer.context_frames=3", "compare[0].trainer.context_frames"),  # self_forcing
    ("stages[0].trainer.context_frames=16", "stages[0].trainer.context_frames"),  # not below the clip
    ("stages[0].trainer={type: diffusion_forcing}", "stages[0].trainer.type"),  # persistent blocks: no parallel mask
    ("stages[0].trainer={type: teacher_forcing}", "stages[0].trainer.type"),
    ("compare[0].trainer.regression_weight=0", "compare[0].trainer.regression_weight"),  # no loss without dmd
    ("compare[0].train={lr: -1}", "compare[0].train.lr"),  # a variant's own train overrides
    ("compare[0].train.clip_frames=15", "compare[0].train.clip_frames"),
])
def test_built_in_plugins_refuse_windows_and_contexts_that_cannot_run(override, path):
    """What used to fail only at run time (some after training) is a validation error at the field."""
    from worldkit.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config.load(MAIN, [override])
    assert path in [i.path for i in err.value.issues]


def test_run_refuses_an_unreadable_init_before_making_a_folder(tmp_path, capsys):
    from worldkit.cli import main

    bogus = tmp_path / "notes.txt"
    bogus.write_text("not a checkpoint")
    code = main(["run", str(MAIN), "--out", str(tmp_path / "run"), "--set", f"model.init={bogus}"])
    err = capsys.readouterr().err
    assert code == 2 and f"model.init: {bogus} is not a readable checkpoint" in err
    assert not (tmp_path / "run").exists()


def test_self_forcing_pendulum_compares_sparse_forcing_with_the_self_forcing_baseline():
    cfg = config.load(MAIN)
    assert (cfg.memory.type, cfg.selector.type, cfg.attention.type, cfg.stages[0].trainer.type) == (
        "persistent_block", "local_window", "pbsa", "self_forcing")
    assert cfg.warnings() == []  # no top-level setting that the stages replace
    assert cfg.model.init == "base/pendulum"
    assert [s.name for s in cfg.stages] == ["sparse_self_forcing"] and cfg.stages[0].memory is None
    (base,) = cfg.compare
    assert base.memory.type == "sliding_window" and base.memory.config.window_frames == cfg.train.clip_frames
    assert base.trainer.type == "self_forcing" and not base.train


def test_main_job_reads_one_base_under_every_memory_policy_at_one_kv_budget():
    """The main job evaluates the shipped base zero-shot (no training, so no damage) under Sparse Forcing
    and baselines that hold the same cached blocks, a window shorter than every gap, and dense."""
    from worldkit import registry
    from worldkit.stages import resolve_stages
    from worldkit_plugins.envs.revisit import tour_frames

    cfg = config.load(Path(__file__).parents[1] / "experiments" / "sparse_forcing.yaml")
    assert cfg.env.type == "revisit_room" and cfg.model.init == "base/revisit_room"
    stages = resolve_stages(cfg)
    assert all(st.train.max_steps == 0 for st in stages)
    assert cfg.eval.context_frames == tour_frames(cfg.env.config)  # the tour shows every object
    # a whole round of the gaps fits in the generated frames
    assert max(cfg.eval.horizons) * cfg.train.clip_frames >= sum(cfg.env.config.gaps) + 35
    by_name = {st.name: st for st in stages}
    sparse = by_name["sparse_forcing"]
    assert (sparse.memory["type"], sparse.selector["type"], sparse.attention["type"]) == (
        "persistent_block", "local_window", "pbsa")
    assert cfg.eval.reference == "window_9"
    # at 4 blocks a frame the chunk is read whole (block_granularity.yaml); the paper's selection beside it
    assert sparse.selector.get("keep_chunk") is True
    assert not by_name["sparse_forcing_paper_top_k"].selector.get("keep_chunk", False)

    def cached_blocks(st):  # the cache's blocks once full, one 4-block frame at a time
        from worldkit.interfaces import CacheSpec

        mem = registry.build("memory", st.memory["type"], {k: v for k, v in st.memory.items() if k != "type"})
        mem.reset(CacheSpec(layers=1, batch=1, heads=1, head_dim=6, block_tokens=1, blocks_per_frame=4,
                            chunk_frames=2, train_frames=cfg.train.clip_frames))
        sink, hist, persistent = mem.sink_frames, mem.history_frames, mem.persistent_cap
        return sink * 4 + (hist or 0) * 4 + persistent

    budget = cached_blocks(sparse)
    for name in ("persistent_block", "persistent_block_absolute", "persistent_block_ordered", "window_9", "sink_9"):
        assert cached_blocks(by_name[name]) == budget, name
    assert by_name["window_4"].memory["window_frames"] <= min(cfg.env.config.gaps)  # the chunk included
    assert by_name["dense"].memory["type"] == "dense"


def _tiny_experiment(tmp_path):
    import yaml

    from worldkit.checkpoints import save_weights
    from worldkit.experiment import RunData, make_module, resolve_stages

    raw = {"name": "t", "seed": 0, "env": {"type": "pendulum", "size": 16},
           "data": {"train_episodes": 4, "val_episodes": 1, "test_episodes": 2, "episode_frames": 10,
                    "cache_dir": str(tmp_path), "workers": 1},
           "model": {"patch": 4, "width": 32, "layers": 2, "heads": 2, "block_patches": 2, "chunk_frames": 2,
                     "sampler_steps": 2},
           "train": {"clip_frames": 6},
           "eval": {"horizons": [1], "episodes": 2, "context_frames": 2, "probe_steps": 20},
           "stages": [{"name": "a", "trainer": {"type": "diffusion_forcing"}}],
           "compare": [{"name": "w", "trainer": {"type": "diffusion_forcing"},
                        "memory": {"type": "sliding_window", "window_frames": 4}},
                       {"name": "p", "memory": {"type": "persistent_block", "sink_frames": 1,
                                                "persistent_frames": 1, "window_frames": 4}}]}
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = config.load(path, ["compare[1].trainer={type: self_forcing}"])  # persistent blocks train by rollout
    model = make_module(cfg, resolve_stages(cfg)[0], RunData(cfg)).model
    torch.nn.init.normal_(model.final.weight, std=0.1)  # not the zero-initialised output: rollouts differ
    save_weights(model, tmp_path / "m.pt")
    return raw, path, model


def test_worldkit_eval_scores_one_checkpoint_under_every_variants_plugins(tmp_path, capsys):
    """`worldkit eval WEIGHTS X.yaml`: every stage and variant evaluates the same weights, untrained (the
    persistent-block variant needs no trainer that could train it), with the full report."""
    import yaml

    from worldkit.cli import main

    raw, path, model = _tiny_experiment(tmp_path)
    assert main(["eval", "base/nope", str(path), "--out", str(tmp_path / "x")]) == 2  # one line, no traceback
    assert "base/nope" in capsys.readouterr().err and not (tmp_path / "x").exists()
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({**raw, "grid": {"seed": [0, 1]}}))
    assert main(["eval", str(tmp_path / "m.pt"), str(grid)]) == 2 and "a grid experiment" in capsys.readouterr().err
    out = tmp_path / "ev"
    assert main(["eval", str(tmp_path / "m.pt"), str(path), "--out", str(out), "--set", "eval.episodes=5"]) == 0
    md = (out / "results.md").read_text()
    for name in ("0-a", "1-w", "2-p"):
        assert f"| `{name}` | done |" in md
        ev = json.loads((out / "stages" / name / "eval.json").read_text())
        assert ev["episodes"] == 2  # the ones there are, not the 5 asked for
        assert not (out / "stages" / name / "checkpoints").exists()  # nothing trained
    assert "| trainer |" not in md  # eval trains nothing: no trainer column
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.items())
    assert (out / "psnr_vs_horizon.png").exists() and (out / "config.yaml").exists()
    from PIL import Image

    gif = Image.open(out / "rollouts.gif")  # the truth beside each stage, frame by frame
    assert gif.is_animated and gif.n_frames == 2 + 6  # context + one 6-frame clip
    tile = 16 * 2 + 4  # a 16-pixel frame drawn 2x, and its margin
    assert gif.size == (4 * tile + 4, 24 + 2 * tile + 4)  # truth + three stages, two episodes
    import imageio_ffmpeg  # in the dev extra: the MP4 is written where it is installed

    assert "rollouts.gif and rollouts.mp4" in md
    reader = imageio_ffmpeg.read_frames(str(out / "rollouts.mp4"))
    meta = next(reader)
    assert meta["size"] == (gif.size[0] + gif.size[0] % 2, gif.size[1] + gif.size[1] % 2)
    assert sum(1 for _ in reader) == gif.n_frames


def test_a_stage_of_zero_steps_evaluates_its_starting_weights(tmp_path):
    """train.max_steps: 0 in `worldkit run`: the stage saves and scores the weights it starts from."""
    from worldkit.cli import main

    _, path, model = _tiny_experiment(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--set", "train.max_steps=0",
                 "--set", f"model.init={tmp_path / 'm.pt'}", "--set", "compare=[]", "--set", "eval.strips=0"]) == 0
    stage = out / "stages" / "0-a"
    saved = torch.load(stage / "model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    assert (stage / "eval.json").exists() and (stage / "summary.json").exists()
    assert not (stage / "checkpoints").exists()
    assert not (stage / "strips.png").exists() and (out / "rollouts.gif").exists()  # strips: 0 draws none
    assert "0-a" in (out / "results.md").read_text()


def test_readme_override_example_validates():
    import re
    import shlex

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (command,) = re.findall(r"^worldkit validate experiments/sparse_forcing\.yaml(?:[^\n\\]|\\\n)*", readme, re.M)
    argv = shlex.split(command.replace("\\\n", " "))
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert len(sets) >= 4
    cfg = config.load(MAIN, sets)
    assert cfg.memory.type == "sink" and cfg.model.width == 256


def test_readme_experiment_example_validates_with_nothing_unused():
    import re

    import yaml

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(name: my_ablation.*?)```", readme, re.S)
    cfg = config.validate(yaml.safe_load(block))
    assert [s.name for s in cfg.stages] == ["dense", "sparse"] and cfg.warnings() == []
    assert cfg.stage_config(cfg.stages[0]).trainer.type == "diffusion_forcing"


def test_top_k_is_a_count_or_a_fraction_never_a_boolean():
    from worldkit.errors import ConfigError

    assert config.load(MAIN, ["selector.top_k=1"]).selector.config.top_k == 1  # one block
    assert isinstance(config.load(MAIN, ["selector.top_k=1.0"]).selector.config.top_k, float)  # all of them
    for bad in ("true", "'0.5'", "0", "1.5"):
        with pytest.raises(ConfigError):
            config.load(MAIN, [f"selector.top_k={bad}"])


def test_a_grid_may_fix_in_every_cell_what_its_base_lacks(tmp_path):
    """Plugin checks run per cell: the base's implicit trainer (diffusion forcing) cannot train persistent
    blocks, but no cell uses it."""
    import yaml

    from worldkit import grid
    from worldkit.errors import ConfigError

    raw = {"name": "g", "env": {"type": "pendulum"},
           "memory": {"type": "persistent_block", "sink_frames": 1, "persistent_frames": 2, "window_frames": 6},
           "selector": {"type": "local_window", "top_k": 0.25},
           "grid": {"trainer": [{"type": "self_forcing"}, {"type": "self_forcing", "regression_weight": 0.5}]}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert [c.config.trainer.type for c in grid.load(path).cells] == ["self_forcing"] * 2
    raw["grid"]["trainer"].append({"type": "diffusion_forcing"})  # this cell cannot run: refused
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        grid.load(path)
    assert any(i.path == "trainer.type" and "cell" in (i.source or "") for i in err.value.issues)


def test_grid_warnings_are_each_cells_and_a_grid_cannot_set_itself(tmp_path, capsys):
    import yaml

    from worldkit import cli

    raw = {"name": "g", "env": {"type": "pendulum"}, "data": {"test_episodes": 8},
           "grid": {"eval.episodes": [4, 50]}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert "eval.episodes: 50, but data.test_episodes=8" in err and "cell" in err
    assert "eval.episodes: 16" not in err  # the base's default, which no cell uses
    raw["grid"] = {"grid": [{"seed": [0]}]}
    path.write_text(yaml.safe_dump(raw))
    assert cli.main(["validate", str(path)]) == 2
    assert "a grid axis cannot set the grid itself" in capsys.readouterr().err
