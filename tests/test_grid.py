"""Grid experiments: expansion and exclusion (hypothesis), cell names, validation that names the cell and
the field, skip-finished re-runs, a failing cell that does not stop the grid, Ctrl-C, and a tiny grid run
end to end through the CLI with its TensorBoard files read back."""
from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from worldkit import grid, grid_run, registry, report
from worldkit.cells import CELL, DONE, ERROR
from worldkit.cli import main
from worldkit.errors import ConfigError
from worldkit_plugins.baselines.memory import Dense

from tests.test_report import fake_eval, write_results

# --------------------------------------------------------------------------------------------------
# Expansion (pure)

AXES = ["memory.type", "selector", "train.lr", "stages[1].train.lr"]
VALUES = st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b", "c"]), st.booleans())


@st.composite
def grids(draw):
    axes = draw(st.lists(st.sampled_from(AXES), min_size=1, max_size=3, unique=True))
    g = {a: draw(st.lists(VALUES, min_size=1, max_size=3, unique_by=lambda v: (type(v), v))) for a in axes}
    exclude = draw(st.lists(
        st.lists(st.sampled_from(axes), min_size=1, unique=True).flatmap(
            lambda keys: st.fixed_dictionaries({k: st.sampled_from(g[k]) for k in keys})),
        max_size=3))
    return g, exclude


def same(a, b) -> bool:
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(grids())
def test_cells_are_the_product_minus_the_exclusions_in_order(case):
    g, exclude = case
    assert grid.check(g, exclude) == []
    product = [dict(zip(g, combo)) for combo in itertools.product(*g.values())]
    hit = [any(all(same(c[k], v) for k, v in part.items()) for part in exclude) for c in product]
    cells = grid.assignments(g, exclude)
    kept = [c for c, h in zip(product, hit) if not h]
    assert len(cells) == len(kept) == len(product) - sum(hit)
    assert all(c.keys() == d.keys() and all(same(c[k], d[k]) for k in c) for c, d in zip(cells, kept))
    names = grid.cell_names(cells)
    assert len(set(names)) == len(names)
    assert all(n and not n.startswith((".", "-")) and "/" not in n and len(n) <= grid.MAX_NAME for n in names)


def test_exclusion_reaches_inside_a_mapping_value_and_booleans_are_not_numbers():
    g = {"memory.type": ["dense", "sink"], "selector": [{"type": "all"}, {"type": "local_window", "top_k": 0.25}]}
    cells = grid.assignments(g, [{"memory.type": "dense", "selector.type": "local_window"}])
    assert [(c["memory.type"], c["selector"]["type"]) for c in cells] == [
        ("dense", "all"), ("sink", "all"), ("sink", "local_window")]
    assert grid.assignments({"a": [1, True]}, [{"a": True}]) == [{"a": 1}]


def test_grid_problems_name_the_path_to_fix():
    problems = {i.path: i.message for i in grid.check(
        {"memory.type": ["dense", "dense"], "selector": [{"type": "all"}]},
        [{"memory.typo": "dense"}, {"selector.type": "local_windw"}],
    )}
    assert "value listed twice" in problems["grid.memory.type"]
    typo = problems["exclude[0].memory.typo"]
    assert "not on a grid axis" in typo and "memory.type" in typo
    assert "selector.type takes: 'all'" in problems["exclude[1].selector.type"]
    assert "needs a grid" in grid.check({}, [{"a": 1}])[0].message


def test_cell_names_are_readable_safe_and_unique():
    cells = grid.assignments({"memory.type": ["sink"], "selector": [{"type": "all"}, {"type": "local_window", "top_k": 0.25}]})
    assert grid.cell_names(cells) == ["memory=sink,selector=all", "memory=sink,selector=local_window+top_k=0.25"]
    assert grid.cell_names([{"train.lr": 1e-4, "stages[1].train.lr": 0.5}]) == ["train.lr=0.0001,stages.1.train.lr=0.5"]
    assert grid.cell_names([{"env.path": "a/b c"}, {"env.path": "a b/c"}]) == ["path=a_b_c", "path=a_b_c~2"]
    assert grid.cell_names([{"flag": None}, {"flag": False}, {"flag": [1, 4]}]) == ["flag=none", "flag=false", "flag=1+4"]
    long = grid.cell_names([{"x": "v" * 300}])[0]
    assert len(long) == grid.MAX_NAME and long.startswith("x=vvv") and "~" in long


# --------------------------------------------------------------------------------------------------
# Validation of whole cells


def tiny_raw(cache) -> dict:
    return {
        "name": "tinygrid",
        "seed": 0,
        "env": {"type": "pendulum", "size": 16},
        "data": {"train_episodes": 8, "val_episodes": 2, "test_episodes": 2, "episode_frames": 16,
                 "cache_dir": str(cache), "workers": 1},
        "model": {"patch": 4, "width": 32, "layers": 1, "heads": 2, "block_patches": 2, "chunk_frames": 2,
                  "sampler_steps": 2},
        "train": {"max_steps": 2, "batch_size": 4, "clip_frames": 6, "warmup_steps": 1, "val_every": 2,
                  "log_every": 1, "lr": 2e-3},
        "eval": {"horizons": [1, 2], "episodes": 2, "context_frames": 2, "strips": 1},
    }


def test_every_cell_is_validated_before_anything_runs_and_errors_name_cell_and_field(tmp_path):
    raw = {**tiny_raw(tmp_path), "grid": {"memory": [{"type": "sink"}, {"type": "sliding_window"}],
                                          "memory.window_frames": [0, 6]}}
    with pytest.raises(ConfigError) as err:
        grid.expand(copy.deepcopy(raw), "g.yaml")
    lines = err.value.lines()
    assert "g.yaml cell memory=sink,window_frames=0: memory.window_frames: Input should be greater than or equal to 1 (got 0)" in lines
    assert any(ln.startswith("g.yaml cell memory=sliding_window,window_frames=0: memory.window_frames") for ln in lines)
    assert len(lines) == 2
    raw["grid"]["memory.window_frames"] = [4, 6]  # a deeper axis refines the shallower one
    cells = grid.expand(copy.deepcopy(raw), "g.yaml")
    assert [(c.config.memory.type, c.config.memory.config.window_frames) for c in cells] == [
        ("sink", 4), ("sink", 6), ("sliding_window", 4), ("sliding_window", 6)]
    assert all(c.config.grid == {} and c.config.exclude == [] for c in cells)


def test_multi_device_cells_are_refused(tmp_path):
    raw = {**tiny_raw(tmp_path), "grid": {"train.devices": [1, 2]}}
    with pytest.raises(ConfigError, match="cell devices=2: train: grid cells run one process each"):
        grid.expand(raw, "g.yaml")


# --------------------------------------------------------------------------------------------------
# Running with a fake runner: skip finished cells, record failures, Ctrl-C


def fake_grid(tmp_path, values=("dense", "sink", "sliding_window")) -> grid.Grid:
    raw = {**tiny_raw(tmp_path), "grid": {"memory.type": list(values)}}
    return grid.Grid(raw, "g.yaml", grid.expand(copy.deepcopy(raw), "g.yaml"))


class Runner:
    """Stands in for experiment.run: writes a stage's results, or raises for the cells in ``fail``."""

    def __init__(self, fail=(), interrupt=()):
        self.calls, self.fail, self.interrupt = [], fail, interrupt

    def __call__(self, cfg, run_dir, resume=False):
        self.calls.append((cfg.memory.type, resume))
        if cfg.memory.type in self.interrupt:
            raise KeyboardInterrupt
        (Path(run_dir) / "stages").mkdir(exist_ok=True)
        if cfg.memory.type in self.fail:
            raise RuntimeError(f"{cfg.memory.type} broke")
        write_results(run_dir, fake_eval(20.0))


def test_a_failing_cell_is_recorded_and_the_grid_goes_on_and_reruns_skip_finished_cells(tmp_path):
    g, out = fake_grid(tmp_path), tmp_path / "out"
    first = Runner(fail=("sink",))
    results = grid_run.run(g, out, runner=first)
    assert [c[0] for c in first.calls] == ["dense", "sink", "sliding_window"]
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert "RuntimeError: sink broke" in (out / "cells" / "memory=sink" / ERROR).read_text()
    assert "FAILED" in (out / "results.md").read_text()
    done = (out / "cells" / "memory=dense" / DONE).read_text()

    again = Runner()
    results = grid_run.run(g, out, runner=again)
    assert again.calls == [("sink", True)]  # only the failed cell, continued in its own folder
    assert [r.status for r in results] == ["done"] * 3
    assert not (out / "cells" / "memory=sink" / ERROR).exists()
    assert (out / "cells" / "memory=dense" / DONE).read_text() == done


def test_ctrl_c_keeps_finished_cells_and_the_grid_resumes(tmp_path):
    g, out = fake_grid(tmp_path), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt, match=f"resume with: worldkit run --resume {out}"):
        grid_run.run(g, out, runner=Runner(interrupt=("sink",)))
    assert (out / "cells" / "memory=dense" / DONE).exists()
    assert not (out / "cells" / "memory=sink" / DONE).exists()
    assert [r.status for r in report.collect(out)] == ["done", "unfinished"]
    rest = Runner()
    grid_run.run(g, out, runner=rest)
    assert [c[0] for c in rest.calls] == ["sink", "sliding_window"]


def test_a_started_cell_keeps_the_config_it_started_with(tmp_path):
    g, out = fake_grid(tmp_path, values=("dense",)), tmp_path / "out"
    grid_run.run(g, out, runner=Runner(fail=("dense",)))  # started, then failed
    saved = out / "cells" / "memory=dense" / "config.yaml"
    text = saved.read_text().replace("max_steps: 2", "max_steps: 3")
    saved.write_text(text)
    seen = []
    grid_run.run(g, out, runner=lambda cfg, d, resume: seen.append(cfg.train.max_steps) or write_results(d, fake_eval(1.0)))
    assert seen == [3]


# --------------------------------------------------------------------------------------------------
# A tiny grid end to end, through the CLI


class Exploding(Dense):
    """Deliberately fails as soon as a cache is set up (test plugin)."""

    def reset(self, spec):
        raise RuntimeError("exploding memory: deliberate failure")


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """A 3-cell grid (dense, a failing plugin, sink) run through ``worldkit run``, then resumed."""
    root = tmp_path_factory.mktemp("grid")
    raw = {**tiny_raw(root / "cache"), "grid": {"memory.type": ["dense", "exploding", "sink"]}}
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = root / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only spins when other processes share the cores
    try:
        with registry.register("memory", "exploding", Exploding), pytest.MonkeyPatch.context() as mp:
            assert main(["run", str(path), "--out", str(out)]) == 1  # a cell failed; the others ran
            first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
            import worldkit.experiment as experiment

            resumed, real = [], experiment.run
            mp.setattr(experiment, "run", lambda cfg, d, resume=False: resumed.append((Path(d).name, resume)) or real(cfg, d, resume))
            assert main(["run", "--resume", str(out)]) == 1  # and fails again
    finally:
        torch.set_num_threads(threads)
    return out, first, resumed


def test_tiny_grid_runs_every_cell_and_records_the_failure(tiny_grid):
    out, _, _ = tiny_grid
    cells = out / "cells"
    assert sorted(p.name for p in cells.iterdir()) == ["memory=dense", "memory=exploding", "memory=sink"]
    for ok in ("memory=dense", "memory=sink"):
        assert (cells / ok / DONE).exists() and (cells / ok / "stages" / "0-train" / "eval.json").exists()
    assert "exploding memory: deliberate failure" in (cells / "memory=exploding" / ERROR).read_text()
    md = (out / "results.md").read_text()
    assert "| `memory=exploding` | FAILED |" in md and "| `memory=sink` | done |" in md
    assert (out / "psnr_vs_horizon.png").exists() and (out / "cost_vs_horizon.png").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["grid"] == {"memory.type": ["dense", "exploding", "sink"]}


def test_resume_skips_finished_cells_and_retries_the_failed_one(tiny_grid):
    out, first, resumed = tiny_grid
    assert resumed == [("memory=exploding", True)]
    for rel, data in first.items():  # nothing of a finished cell was touched by the resume
        if len(rel.parts) > 2 and rel.parts[1] in ("memory=dense", "memory=sink"):
            assert (out / rel).read_bytes() == data, rel
    assert "deliberate failure" in (out / "cells" / "memory=exploding" / ERROR).read_text()


def test_tensorboard_has_scalars_images_and_one_hparams_session_per_cell(tiny_grid):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    out, _, _ = tiny_grid
    ea = EventAccumulator(str(out / "cells" / "memory=sink" / "tb" / "0-train"), size_guidance={"scalars": 0})
    ea.Reload()
    scalars = set(ea.Tags()["scalars"])
    assert {"train/loss", "eval/psnr@1x", "eval_frame/psnr/model", "eval_frame/ssim/model", "eval_horizon/psnr/model",
            "eval_horizon/ms_per_chunk/total", "eval_horizon/kv_mib", "hparams/psnr@1x", "hparams/psnr@2x",
            "hparams/ms_per_chunk", "hparams/kv_mib"} <= scalars
    assert sorted(ea.Tags()["images"]) == ["eval/rollouts", "eval/strips"]  # strips, and the animation
    start = metadata.parse_session_start_info_plugin_data(
        ea.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["memory"].string_value == "sink" and start.hparams["model.width"].number_value == 32

    decl = EventAccumulator(str(out / "tb"))
    decl.Reload()
    exp = metadata.parse_experiment_plugin_data(decl.PluginTagToContent("hparams")[metadata.EXPERIMENT_TAG])
    memory = next(h for h in exp.hparam_infos if h.name == "memory")
    assert sorted(v.string_value for v in memory.domain_discrete.values) == ["dense", "exploding", "sink"]
    assert "hparams/psnr@2x" in [m.name.tag for m in exp.metric_infos]


def test_worldkit_report_rebuilds_the_same_table(tiny_grid, tmp_path):
    import shutil

    out, _, _ = tiny_grid
    md, csv_text = (out / "results.md").read_text(), (out / "results.csv").read_text()
    copy_dir = tmp_path / out.name
    shutil.copytree(out / "cells", copy_dir / "cells")  # the cell folders alone
    assert main(["report", str(copy_dir)]) == 0
    assert (copy_dir / "results.md").read_text() == md
    assert (copy_dir / "results.csv").read_text() == csv_text
    assert json.loads((out / "cells" / "memory=sink" / CELL).read_text())["assignment"] == {"memory.type": "sink"}


# --------------------------------------------------------------------------------------------------
# Shared leading stages


def staged_runner(calls: list):
    """Stands in for experiment.run with its resume rule: a stage with model.pt and eval.json is skipped."""
    from worldkit.experiment import resolve_stages

    def run(cfg, run_dir, resume=False):
        trained = []
        for stage in resolve_stages(cfg):
            d = Path(run_dir) / "stages" / stage.dirname
            if resume and (d / "model.pt").exists() and (d / "eval.json").exists():
                continue
            write_results(run_dir, fake_eval(20.0), stage=stage.dirname)
            (d / "model.pt").write_bytes(stage.dirname.encode())
            (Path(run_dir) / "tb" / stage.dirname).mkdir(parents=True, exist_ok=True)
            trained.append(stage.dirname)
        calls.append((Path(run_dir).name, trained))

    return run


def staged_grid(tmp_path, grid_axes: dict) -> grid.Grid:
    raw = {**tiny_raw(tmp_path), "grid": grid_axes, "stages": [
        {"name": "pre", "trainer": {"type": "diffusion_forcing"}, "memory": {"type": "dense"}},
        {"name": "fine", "trainer": {"type": "self_forcing"}}]}
    return grid.Grid(raw, "g.yaml", grid.expand(copy.deepcopy(raw), "g.yaml"))


def test_a_leading_stage_that_cells_share_is_trained_once(tmp_path):
    out, calls = tmp_path / "out", []
    grid_run.run(staged_grid(tmp_path, {"memory.type": ["dense", "sink", "sliding_window"]}), out, runner=staged_runner(calls))
    assert calls == [("memory=dense", ["0-pre", "1-fine"]), ("memory=sink", ["1-fine"]), ("memory=sliding_window", ["1-fine"])]
    sink = out / "cells" / "memory=sink"
    assert (sink / "stages" / "0-pre" / "model.pt").read_bytes() == b"0-pre" and (sink / "tb" / "0-pre").is_dir()
    assert not list((out / "cells").rglob(".*.tmp-*"))


def test_a_stage_that_differs_is_trained_in_every_cell(tmp_path):
    out, calls = tmp_path / "out", []
    grid_run.run(staged_grid(tmp_path, {"stages[0].train.lr": [0.001, 0.002]}), out, runner=staged_runner(calls))
    assert [trained for _, trained in calls] == [["0-pre", "1-fine"]] * 2
    raw = {**tiny_raw(tmp_path), "grid": {"memory.type": ["dense", "sink"]}}  # one stage: the result, never shared
    calls.clear()
    grid_run.run(grid.Grid(raw, "g.yaml", grid.expand(copy.deepcopy(raw), "g.yaml")), tmp_path / "one", runner=staged_runner(calls))
    assert [trained for _, trained in calls] == [["0-train"]] * 2


def test_the_result_stage_is_not_shared_when_only_a_variant_differs(tmp_path):
    """With a compare: variant after the chain, the chain's last stage is still each cell's own result."""
    raw = {**tiny_raw(tmp_path), "grid": {"compare[0].train.lr": [0.001, 0.002]}, "stages": [
        {"name": "pre", "trainer": {"type": "diffusion_forcing"}, "memory": {"type": "dense"}},
        {"name": "fine", "trainer": {"type": "self_forcing"}}],
        "compare": [{"name": "alt", "trainer": {"type": "self_forcing"}}]}
    calls = []
    grid_run.run(grid.Grid(raw, "g.yaml", grid.expand(copy.deepcopy(raw), "g.yaml")), tmp_path / "out", runner=staged_runner(calls))
    assert calls == [("lr=0.001", ["0-pre", "1-fine", "2-alt"]), ("lr=0.002", ["1-fine", "2-alt"])]
