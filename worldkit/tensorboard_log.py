"""TensorBoard for a run: per-stage evaluation extras, and the HParams sessions that compare runs.

Per stage of a run (``log_stage``): PSNR / SSIM / foreground-PSNR curves over the frame index and per
horizon bucket for the model and both baselines, ms per chunk and KV MiB per horizon, KV MiB per chunk,
the ground-truth-vs-prediction strips as an image and the truth beside the forecast as an animation. Once
per run, after its last stage, the run's hparams (plugin names and key parameters as primitives) and
final metrics are written as one HParams session (``log_hparams``); a grid declares the table's columns
once in its own ``tb/`` (``declare_hparams``), so that the HParams tab compares every cell in one table.
Sessions carry no experiment declaration of their own: TensorBoard would pick one run's declaration
arbitrarily, and a cell's hparams (e.g. ``memory.window_frames``) are not every cell's.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Union

from worldkit.report import kv_per_horizon
from worldkit.stages import final_stage, resolve_stages

CURVES = ("psnr", "ssim", "fg_psnr")  # per-frame curves logged to TensorBoard
BUCKETS = ("psnr", "ssim", "fg_psnr", "skill", "state_err")  # per-horizon means logged to TensorBoard


def _primitive(value: Any) -> Union[bool, int, float, str]:
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


def hparams_of(cfg) -> dict[str, Union[bool, int, float, str]]:
    """The run's hparams as primitives: each plugin's name and settings (of the last stage), the model
    and training sizes. Settings that are None are left out (a column stays one type)."""
    stages = resolve_stages(cfg)
    final = final_stage(cfg)
    out: dict[str, Any] = {"experiment": cfg.name, "stages": ">".join(s.name for s in stages),
                           "seed": cfg.seed, "model.init": cfg.model.init or "scratch"}
    specs = {"env": cfg.env.to_dict(), "memory": final.memory, "selector": final.selector,
             "attention": final.attention, "trainer": final.trainer}
    for kind, spec in specs.items():
        out[kind] = spec["type"]
        out.update({f"{kind}.{k}": _primitive(v) for k, v in spec.items() if k != "type" and v is not None})
    for k in ("patch", "width", "layers", "heads", "block_patches", "chunk_frames", "sampler_steps"):
        out[f"model.{k}"] = getattr(cfg.model, k)
    for k in ("max_steps", "batch_size", "clip_frames", "lr"):
        out[f"train.{k}"] = getattr(final.train, k)
    return out


def metric_names(cfg) -> list[str]:
    """The final metrics a run declares: PSNR at every horizon, the others at the longest, cost."""
    h = max(cfg.eval.horizons)
    return [f"psnr@{x}x" for x in cfg.eval.horizons] + [
        f"{m}@{h}x" for m in ("ssim", "fg_psnr", "skill", "state_err")] + ["ms_per_chunk", "kv_mib"]


def log_hparams(writer, cfg, summary: dict[str, float], step: int) -> None:
    """One HParams session in ``writer``'s run: the hparams, and the final metrics as ``hparams/<name>``."""
    from torch.utils.tensorboard.summary import hparams

    metrics = {f"hparams/{m}": float(summary[m]) for m in metric_names(cfg) if m in summary}
    for tag, value in metrics.items():
        if math.isfinite(value):
            writer.add_scalar(tag, value, step)
    _, start, end = hparams(hparams_of(cfg), metrics)
    file_writer = writer._get_file_writer()  # what SummaryWriter.add_* write through; add_hparams would make a sub-run
    file_writer.add_summary(start)
    file_writer.add_summary(end)


def _hparam_info(name: str, values: list, runs: int):
    """An HParams column: its type, every value it takes (a range for numbers), and whether it differs
    between the ``runs`` runs (it does when some runs do not have it)."""
    from tensorboard.plugins.hparams import api_pb2

    info = api_pb2.HParamInfo(name=name, differs=len({json.dumps(v) for v in values}) > 1 or len(values) < runs)
    if all(isinstance(v, bool) for v in values):
        info.type = api_pb2.DATA_TYPE_BOOL
        info.domain_discrete.extend(sorted(set(values)))
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        info.type = api_pb2.DATA_TYPE_FLOAT64
        info.domain_interval.min_value, info.domain_interval.max_value = min(values), max(values)
    else:
        info.type = api_pb2.DATA_TYPE_STRING
        info.domain_discrete.extend(sorted({str(v) for v in values}))
    return info


def declare_hparams(tb_dir: Union[str, Path], configs: list) -> None:
    """Declare once, in ``tb_dir``, the HParams table of these runs: every hparam with the values it
    takes, and the final metrics (``hparams/<name>``). Nothing is written when ``tb_dir`` has events."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
    from torch.utils.tensorboard import SummaryWriter

    tb_dir = Path(tb_dir)
    if tb_dir.is_dir() and any(tb_dir.glob("events.out.tfevents.*")):
        return
    values: dict[str, list] = {}
    for cfg in configs:
        for k, v in hparams_of(cfg).items():
            values.setdefault(k, []).append(v)
    metrics = dict.fromkeys(f"hparams/{m}" for cfg in configs for m in metric_names(cfg))
    experiment = api_pb2.Experiment(
        hparam_infos=[_hparam_info(k, v, len(configs)) for k, v in values.items()],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in metrics],
    )
    content = plugin_data_pb2.HParamsPluginData(experiment=experiment, version=metadata.PLUGIN_DATA_VERSION)
    value = Summary.Value(tag=metadata.EXPERIMENT_TAG, metadata=metadata.create_summary_metadata(content))
    summary = Summary(value=[value])
    tb_dir.mkdir(parents=True, exist_ok=True)
    with SummaryWriter(str(tb_dir)) as w:
        w._get_file_writer().add_summary(summary)


def _strip_image(path: Path):
    """The strips PNG as an (H, W, 3) float array in [0, 1], or None when there is none."""
    if not path.exists():
        return None
    import matplotlib.image

    return matplotlib.image.imread(str(path))[..., :3]


def log_stage(logger, cfg, stage_index: int, res, stage_dir: Union[str, Path], step: int) -> None:
    """A stage's evaluation to TensorBoard (curves, per-horizon cost, strips); after the last stage of the
    run also its hparams session. ``logger`` is the stage's TensorBoardLogger."""
    w = logger.experiment
    ev = asdict(res)  # the eval.json form
    for metric in CURVES:
        for who, curve in ev["curves"].get(metric, {}).items():
            for i, v in enumerate(curve):
                if math.isfinite(v):
                    w.add_scalar(f"eval_frame/{metric}/{who}", v, i + 1)
    for metric in BUCKETS:
        for who, buckets in ev["buckets"].get(metric, {}).items():
            for h, (mean, _se) in zip(ev["horizons"], buckets):
                if math.isfinite(mean):
                    w.add_scalar(f"eval_horizon/{metric}/{who}", mean, h)
    for part, per_horizon in ev["ms_per_chunk"].items():
        for h, ms in zip(ev["horizons"], per_horizon):
            w.add_scalar(f"eval_horizon/ms_per_chunk/{part}", ms, h)
    for h, mib in zip(ev["horizons"], kv_per_horizon(ev)):
        w.add_scalar("eval_horizon/kv_mib", mib, h)
    for i, b in enumerate(ev["kv_bytes"]):
        w.add_scalar("eval_chunk/kv_mib", b / 2**20, i + 1)
    image = _strip_image(Path(stage_dir) / "strips.png")
    if image is not None:
        w.add_image("eval/strips", image, step, dataformats="HWC")
    from worldkit.animation import gif_bytes, rollout_frames, tensorboard_gif

    frames = rollout_frames([(Path(stage_dir).name, Path(stage_dir) / "rollouts.npz")])
    if frames:  # the truth beside the forecast, played in the Images tab
        tensorboard_gif(w, "eval/rollouts", gif_bytes(frames), step, frames[0].size)
    if stage_index == final_stage(cfg).index:
        log_hparams(w, cfg, res.summary(), step)
    w.flush()
