"""Reporting: significance marks, the results table and CSV, plots, rebuilding from cell folders alone,
hparams as primitives, the HParams session and declaration read back from the event files. Cell folders
here are synthetic (``write_cell``); tests/test_grid.py runs a real grid."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from worldkit import config, report, stages, tensorboard_log
from worldkit.cli import main
from worldkit.cells import CELL, CELLS, DONE, ERROR

HORIZONS = [1, 2]


def fake_eval(psnr: float, se: float = 0.1, kv_mib: float = 0.5, ms: float = 10.0, baseline: float = 15.0) -> dict:
    """An eval.json-shaped dict: 2 horizons of a 4-frame clip, 2-frame chunks (4 chunks), three forecasters."""
    buckets = {
        m: {"model": [[psnr + d, se] for d in (0.0, -1.0)], "persistence": [[baseline, 0.2]] * 2,
            "mean_frame": [[baseline - 1, 0.2]] * 2}
        for m in ("psnr", "fg_psnr")
    }
    buckets["ssim"] = {w: [[0.5, 0.01]] * 2 for w in ("model", "persistence", "mean_frame")}
    buckets["skill"] = {w: [[0.1, 0.02]] * 2 for w in ("model", "mean_frame")}
    curves = {m: {w: [psnr] * 8 for w in ("model", "persistence", "mean_frame")} for m in ("psnr", "ssim", "fg_psnr")}
    return {"horizons": HORIZONS, "clip_frames": 4, "buckets": buckets, "curves": curves,
            "ms_per_chunk": {"denoise": [ms * 0.8] * 2, "commit": [ms * 0.2] * 2, "total": [ms, ms]},
            "kv_bytes": [int(kv_mib * 2**20 * (i + 1) / 4) for i in range(4)], "peak_kv_bytes": int(kv_mib * 2**20),
            "episodes": 4, "seeds": 1}


def summary_of(ev: dict) -> dict:
    out = {"stage": "0-train"}
    for metric, by_who in ev["buckets"].items():
        for h, (m, se) in zip(ev["horizons"], by_who["model"]):
            out[f"{metric}@{h}x"], out[f"{metric}_se@{h}x"] = m, se
    out["ms_per_chunk"], out["kv_mib"] = ev["ms_per_chunk"]["total"][-1], ev["peak_kv_bytes"] / 2**20
    return out


def write_results(run_dir: Path, ev: dict, stage: str = "0-train") -> None:
    """What experiment.run leaves in a stage folder that the report reads."""
    d = Path(run_dir) / "stages" / stage
    d.mkdir(parents=True, exist_ok=True)
    (d / "eval.json").write_text(json.dumps(ev))
    (d / "summary.json").write_text(json.dumps({**summary_of(ev), "stage": stage}))


def write_cell(grid_dir: Path, index: int, assignment: dict, status: str, ev: dict | None = None) -> Path:
    name = ",".join(f"{k.split('.')[0]}={v}" for k, v in assignment.items())
    d = Path(grid_dir) / CELLS / name
    d.mkdir(parents=True)
    (d / CELL).write_text(json.dumps({"index": index, "name": name, "assignment": assignment}))
    if ev is not None:
        write_results(d, ev)
    if status == "done":
        (d / DONE).write_text(json.dumps({"name": name, "wall_s": 1.5}))
    elif status == "failed":
        (d / ERROR).write_text("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n")
    return d


@pytest.fixture
def grid_dir(tmp_path) -> Path:
    g = tmp_path / "grid"
    write_cell(g, 0, {"memory.type": "dense"}, "done", fake_eval(20.0, kv_mib=1.0, ms=12.0))
    write_cell(g, 1, {"memory.type": "sink"}, "done", fake_eval(19.9, kv_mib=0.25, ms=8.0))  # within 2 SE of dense
    write_cell(g, 2, {"memory.type": "window"}, "done", fake_eval(17.0, kv_mib=0.25, ms=9.0))  # clearly worse
    write_cell(g, 3, {"memory.type": "broken"}, "failed")
    write_cell(g, 4, {"memory.type": "later"}, "unfinished")
    return g


def rows(md: str) -> dict[str, list[str]]:
    """The markdown table's body rows keyed by their first cell."""
    out = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| cell"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0].strip("`")] = cells
    return out


def test_cells_are_read_in_grid_order_with_status_and_last_stage(grid_dir):
    write_results(grid_dir / CELLS / "memory=dense", fake_eval(25.0), stage="1-finetune")  # the last stage counts
    cells = report.collect(grid_dir)
    assert [c.name for c in cells] == ["memory=dense", "memory=sink", "memory=window", "memory=broken", "memory=later"]
    assert [c.status for c in cells] == ["done", "done", "done", "failed", "unfinished"]
    assert cells[0].stage == "1-finetune" and cells[0].summary["psnr@1x"] == 25.0
    assert cells[3].error == "RuntimeError: boom"


def test_best_is_bold_ties_within_two_standard_errors_are_not_ranked(grid_dir):
    cells = report.collect(grid_dir)
    psnr = next(c for c in report.columns(cells) if c.key == "psnr@1x")
    assert report.marks(cells, psnr) == {"memory=dense": "best", "memory=sink": "tie", "memory=window": ""}
    kv = next(c for c in report.columns(cells) if c.key == "kv_mib")
    assert report.marks(cells, kv) == {"memory=dense": "", "memory=sink": "best", "memory=window": "best"}
    ms = next(c for c in report.columns(cells) if c.key == "ms_per_chunk")
    assert report.marks(cells, ms)["memory=sink"] == "best"

    table = rows(report.markdown(cells, "g"))
    assert table["memory=dense"][3] == "**20.00 ± 0.10**"
    assert table["memory=sink"][3] == "19.90 ± 0.10 ≈"
    assert table["memory=window"][3] == "17.00 ± 0.10"


def test_failed_and_unfinished_cells_are_marked_and_baselines_shown(grid_dir):
    md = report.markdown(report.collect(grid_dir), "g")
    table = rows(md)
    assert table["memory=broken"][1] == "FAILED" and set(table["memory=broken"][3:]) == {"-"}
    assert table["memory=later"][1] == "unfinished"
    assert "`memory=broken`: RuntimeError: boom (cells/memory=broken/error.txt)" in md
    assert table[report.BASELINES["persistence"]][3] == "15.00 ± 0.20"
    assert "5 rows: 3 done, 1 failed, 1 unfinished" in md


def test_baselines_are_left_out_when_cells_scored_them_differently(tmp_path):
    write_cell(tmp_path, 0, {"env.type": "a"}, "done", fake_eval(20.0, baseline=15.0))
    write_cell(tmp_path, 1, {"env.type": "b"}, "done", fake_eval(20.0, baseline=11.0))
    md = report.markdown(report.collect(tmp_path), "g")
    assert report.BASELINES["persistence"] not in md and "scored the baselines differently" in md


def test_kv_at_the_end_of_each_horizon():
    ev = fake_eval(20.0, kv_mib=1.0)  # 4 chunks over 2 horizons: the ends are chunks 2 and 4
    assert report.kv_per_horizon(ev) == [0.5, 1.0]


def test_build_writes_every_file_atomically_and_report_rebuilds_the_same(grid_dir, capsys):
    md = report.build(grid_dir)
    files = {p.name: p.read_bytes() for p in grid_dir.iterdir() if p.is_file()}
    assert set(files) == {"results.csv", "results.md", "psnr_vs_horizon.png", "cost_vs_horizon.png"}  # no temporaries
    assert all(files[p].startswith(b"\x89PNG") for p in ("psnr_vs_horizon.png", "cost_vs_horizon.png"))
    csv_lines = files["results.csv"].decode().splitlines()
    assert len(csv_lines) == 6 and csv_lines[0].startswith("index,cell,status,memory,stage,psnr@1x")
    assert csv_lines[4].split(",")[2] == "failed" and csv_lines[4].endswith("RuntimeError: boom")
    for name in ("results.csv", "results.md"):
        (grid_dir / name).unlink()
    assert main(["report", str(grid_dir)]) == 0
    assert capsys.readouterr().out == md
    assert (grid_dir / "results.md").read_bytes() == files["results.md"]
    assert (grid_dir / "results.csv").read_bytes() == files["results.csv"]


def test_report_refuses_a_folder_that_is_not_a_grid(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a grid folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# hparams and TensorBoard


RAW = {
    "name": "hp", "env": {"type": "pendulum", "size": 16},
    "model": {"patch": 4, "width": 32, "layers": 1, "heads": 2},
    "train": {"clip_frames": 4},
    "eval": {"horizons": HORIZONS},
    "stages": [{"name": "pre", "trainer": {"type": "diffusion_forcing"}},
               {"name": "fine", "trainer": {"type": "self_forcing"}, "memory": {"type": "sliding_window", "window_frames": 4}}],
}


def test_hparams_are_primitives_of_the_last_stage():
    hp = tensorboard_log.hparams_of(config.validate(copy.deepcopy(RAW)))
    assert all(isinstance(v, (bool, int, float, str)) for v in hp.values())
    assert (hp["trainer"], hp["memory"], hp["memory.window_frames"], hp["stages"]) == ("self_forcing", "sliding_window", 4, "pre>fine")
    assert hp["model.width"] == 32 and hp["model.init"] == "scratch"
    assert tensorboard_log.metric_names(config.validate(copy.deepcopy(RAW))) == [
        "psnr@1x", "psnr@2x", "ssim@2x", "fg_psnr@2x", "skill@2x", "state_err@2x", "ms_per_chunk", "kv_mib"]
    # a comparison variant is a baseline trained beside the result, not the result
    raw = copy.deepcopy(RAW)
    raw["compare"] = [{"name": "base", "trainer": {"type": "self_forcing"}, "memory": {"type": "dense"}}]
    cfg = config.validate(raw)
    assert stages.final_stage(cfg).dirname == "1-fine" and tensorboard_log.hparams_of(cfg)["memory"] == "sliding_window"


def load_events(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_a_run_logs_curves_cost_strips_and_one_hparams_session(tmp_path):
    import numpy as np
    from lightning.pytorch.loggers import TensorBoardLogger
    from matplotlib import pyplot as plt
    from tensorboard.plugins.hparams import metadata

    from worldkit.evaluate import EvalResult

    cfg = config.validate(copy.deepcopy(RAW))
    ev = fake_eval(20.0)
    plt.imsave(tmp_path / "strips.png", np.zeros((8, 12, 3)))
    from worldkit.animation import save_rollouts

    frames = np.random.default_rng(0).integers(0, 255, (2, 5, 8, 8, 3), dtype=np.uint8)  # every frame differs
    save_rollouts(tmp_path / "rollouts.npz", frames, frames[:, 2:], 2)
    for index in range(2):  # stage 0, then the last stage
        logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb", version=f"{index}", default_hp_metric=False)
        tensorboard_log.log_stage(logger, cfg, index, EvalResult(**ev), tmp_path, step=5)
        logger.finalize("success")
    first, last = load_events(tmp_path / "tb" / "0"), load_events(tmp_path / "tb" / "1")
    tags = set(last.Tags()["scalars"])
    assert {"eval_frame/psnr/model", "eval_frame/ssim/persistence", "eval_horizon/psnr/model",
            "eval_horizon/ms_per_chunk/total", "eval_horizon/kv_mib", "eval_chunk/kv_mib", "hparams/psnr@2x"} <= tags
    assert [e.step for e in last.Scalars("eval_horizon/kv_mib")] == HORIZONS
    assert len(last.Scalars("eval_frame/psnr/model")) == 8
    assert sorted(last.Tags()["images"]) == ["eval/rollouts", "eval/strips"]
    gif = last.Images("eval/rollouts")[0]  # the truth beside the forecast, animated: the Images tab plays it
    assert gif.encoded_image_string[:4] == b"GIF8" and gif.step == 5
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(gif.encoded_image_string)).n_frames == 5
    assert not any(t.startswith("hparams/") for t in first.Tags()["scalars"])  # only after the last stage
    with pytest.raises(KeyError):
        first.PluginTagToContent("hparams")
    content = last.PluginTagToContent("hparams")
    assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}  # no per-run declaration
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["memory"].string_value == "sliding_window"
    assert start.hparams["memory.window_frames"].number_value == 4
    assert [s.value for s in last.Scalars("hparams/psnr@1x")] == [pytest.approx(20.0)]
    assert [p for p in tmp_path.glob("tb/*/*") if p.is_dir()] == []  # no sub-runs (add_hparams makes one per call)


def test_the_grid_declares_the_table_once_with_every_hparam(tmp_path):
    from tensorboard.plugins.hparams import api_pb2, metadata

    a = config.validate(copy.deepcopy(RAW))
    b_raw = copy.deepcopy(RAW)
    b_raw["stages"][1]["memory"] = {"type": "dense"}
    b = config.validate(b_raw)
    tensorboard_log.declare_hparams(tmp_path / "tb", [a, b])
    tensorboard_log.declare_hparams(tmp_path / "tb", [a])  # already declared: nothing new
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    content = load_events(tmp_path / "tb").PluginTagToContent("hparams")
    exp = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    infos = {h.name: h for h in exp.hparam_infos}
    assert sorted(v.string_value for v in infos["memory"].domain_discrete.values) == ["dense", "sliding_window"]
    assert infos["memory"].differs and infos["memory.window_frames"].differs and not infos["model.width"].differs
    assert infos["memory.window_frames"].type == api_pb2.DATA_TYPE_FLOAT64
    assert [m.name.tag for m in exp.metric_infos] == [f"hparams/{m}" for m in tensorboard_log.metric_names(a)]


def test_a_cells_row_is_its_chains_last_stage_not_a_comparison_variant(tmp_path):
    raw = copy.deepcopy(RAW)
    raw["compare"] = [{"name": "base", "trainer": {"type": "self_forcing"}, "memory": {"type": "dense"}}]
    d = write_cell(tmp_path / "grid", 0, {"memory.type": "sliding_window"}, "done")
    config.save(config.validate(raw), d / "config.yaml")
    write_results(d, fake_eval(20.0), "1-fine")
    write_results(d, fake_eval(10.0), "2-base")
    cell = report.read_cell(d)
    assert cell.status == "done" and cell.stage == "1-fine" and cell.summary["psnr@1x"] == 20.0


def test_the_legend_names_the_timed_batch(grid_dir):
    md = report.build(grid_dir)
    assert "rows evaluated before the batch was recorded" in md  # fake_eval has no batch: an old eval.json
    cells = [report.CellResult(0, "a", {}, "done", eval={"batch": 16}), report.CellResult(1, "b", {}, "done", eval={"batch": 4})]
    assert report._batch_text(cells[:1]) == "for a batch of 16 sequences decoded together"
    assert "differ between rows" in report._batch_text(cells) and report._batch_text([]) == ""


def test_a_baseline_that_beats_every_model_is_bold_and_flagged(tmp_path):
    """The mean frame scoring above every model is the table's answer, not a footnote."""
    write_cell(tmp_path, 0, {"memory.type": "dense"}, "done", fake_eval(12.0, baseline=15.0))
    write_cell(tmp_path, 1, {"memory.type": "sink"}, "done", fake_eval(11.0, baseline=15.0))
    cells = report.collect(tmp_path)
    md = report.markdown(cells, "g")
    table = rows(md)
    # the baseline rows rank with the models: persistence (15) is best, the mean frame (14) beats both models
    assert table[report.BASELINES["persistence"]][3] == "**15.00 ± 0.20** ⚑"
    assert "**" not in table["memory=dense"][3]
    assert "⚑ A trivial baseline beats every model in: PSNR@1x ↑" in md
    assert "| cell | status | memory | PSNR@1x ↑ | PSNR@2x ↑ |" in md


def test_directions_and_ratio_columns_rank_the_closest_to_the_truth():
    col = report.Column("sharpness@4x", "sharpness@4x", "sharpness_se@4x", False, ".2f", target=1.0)
    assert col.label == "sharpness@4x →1"
    blur = report.CellResult(0, "blur", {}, "done", summary={"sharpness@4x": 0.4, "sharpness_se@4x": 0.01})
    noisy = report.CellResult(1, "noisy", {}, "done", summary={"sharpness@4x": 1.3, "sharpness_se@4x": 0.01})
    good = report.CellResult(2, "good", {}, "done", summary={"sharpness@4x": 0.95, "sharpness_se@4x": 0.01})
    assert report.marks([blur, noisy, good], col) == {"blur": "", "noisy": "", "good": "best"}
    fd = report.Column("FD@4x", "fd@4x", None, False, ".3f")
    assert fd.label == "FD@4x ↓" and fd.badness(2.0) > fd.badness(1.0)
