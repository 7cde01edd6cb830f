"""Long-horizon evaluation against ground truth.

Held-out episodes are rolled out from their first ``context_frames`` ground-truth frames and their true
actions to ``max(horizons) x clip_frames`` new frames. Every figure is reported per horizon bucket:
bucket ``h`` covers the generated frames after ``h_prev x clip`` up to ``h x clip`` (the first bucket
starts at the first generated frame), as a mean over episodes (and sampling seeds) with its standard
error. Beside the model, the persistence forecast (copy the last context frame) and the mean training
frame are scored on the same frames, and skill = 1 - MSE(model) / MSE(persistence).
"""
from __future__ import annotations

import json
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from worldkit import metrics
from worldkit.files import atomic_path, atomic_write
from worldkit.frames import frames_to_tensor, tensor_to_frames
from worldkit.rollout import Rollout


@dataclass
class EvalResult:
    """Per-bucket means and standard errors, per-frame curves, timing and memory of one rollout set."""

    horizons: list[int]
    clip_frames: int
    buckets: dict = field(default_factory=dict)  # metric -> forecaster -> [ (mean, se) per horizon ]
    curves: dict = field(default_factory=dict)  # metric -> forecaster -> [mean per generated frame]
    ms_per_chunk: dict = field(default_factory=dict)  # denoise / commit / total -> [median per horizon]
    recall: dict = field(default_factory=dict)  # memory_metrics.recall of every forecast (envs with recall targets)
    quality: dict = field(default_factory=dict)  # quality.quality: Fréchet distance, sharpness, motion per bucket
    kv_bytes: list = field(default_factory=list)  # per sequence, after each chunk's commit
    peak_kv_bytes: int = 0  # per sequence
    batch: int = 1  # sequences decoded together: the timings are for a chunk of this many
    episodes: int = 0
    seeds: int = 0
    context_frames: int = 0

    def bucket(self, metric: str, who: str = "model") -> list[tuple[float, float]]:
        return self.buckets[metric][who]

    def summary(self) -> dict[str, float]:
        """Flat scalars: e.g. ``psnr@4x``, ``psnr_se@4x``, ``skill@12x``, ``ms_per_chunk``, ``kv_mib``."""
        out = {}
        for metric in ("psnr", "ssim", "fg_psnr", "skill", "state_err"):
            if metric not in self.buckets:
                continue
            for h, (m, se) in zip(self.horizons, self.buckets[metric]["model"]):
                out[f"{metric}@{h}x"] = m
                out[f"{metric}_se@{h}x"] = se
        for metric in ("fd", "sharpness", "motion", "physics"):
            for h, (m, se) in zip(self.horizons, self.quality.get(metric, {}).get("model", [])):
                out[f"{metric}@{h}x"] = m
                out[f"{metric}_se@{h}x"] = se
        if self.recall:
            stats = self.recall["stats"]["colour"]["model"]
            for gap, (m, se) in zip(self.recall["gaps"], stats):
                out[f"recall@{gap}"] = m
                out[f"recall_se@{gap}"] = se
            out["false_alarm"], out["false_alarm_se"] = self.recall["false_alarm"]["model"]
        out["ms_per_chunk"] = self.ms_per_chunk["total"][-1] if self.ms_per_chunk else float("nan")
        out["kv_mib"] = self.peak_kv_bytes / 2**20
        return out

    def save(self, path: os.PathLike) -> None:
        atomic_write(path, json.dumps(asdict(self), indent=1))


def _bucket_slices(horizons: list[int], clip: int) -> list[slice]:
    edges = [0] + [h * clip for h in horizons]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


@torch.no_grad()
def evaluate(
    rollout: Rollout,
    frames: np.ndarray,
    actions: np.ndarray,
    horizons: list[int],
    clip_frames: int,
    context_frames: int,
    mean_frame: Tensor,
    background: Optional[Tensor] = None,
    seeds: int = 1,
    batch_size: int = 16,
    out_dir: Optional[os.PathLike] = None,
    strips: int = 4,
    desc: str = "eval",
    probe=None,
    states: Optional[np.ndarray] = None,
    targets=None,
    reference: Optional[Tensor] = None,
    step=None,
    teacher_forced: bool = False,
) -> EvalResult:
    """Roll out every episode of ``frames`` (N, T, H, W, 3) uint8 / ``actions`` (N, T, A) and score it.

    ``mean_frame`` (3, H, W) in [-1, 1] is the mean training frame; ``background`` (3, H, W) the
    reference for the foreground PSNR (default: ``mean_frame``). Strips are saved under ``out_dir``.
    With a state ``probe`` and the episodes' ``states`` (N, T, S), the state error of every forecast
    (and of the ground truth itself, the probe's floor) is scored as ``state_err``; with ``reference``
    probe features of real frames too, the Fréchet distance per bucket (``quality``); with ``step`` (an
    env's ``observable_step``, config bound), the physics residual. With the
    episodes' recall ``targets`` (an env's ``recall_targets`` over their first ``context + n_gen``
    frames), recall by gap is scored (``memory_metrics``) for the model, the truth, the baselines and
    the oracle that pastes the last real sighting. ``teacher_forced``: each chunk commits the true frames
    instead of its own (``Rollout.run``'s ``truth``)."""
    from worldkit import memory_metrics, quality, recall_report
    from worldkit.probe import state_error

    model = rollout.model
    device = next(model.parameters()).device
    n_gen = max(horizons) * clip_frames
    need = context_frames + n_gen
    if frames.shape[1] < need:
        raise ValueError(f"test episodes have {frames.shape[1]} frames; the horizons need {need}")
    background = mean_frame if background is None else background
    per = {m: {w: [] for w in ("model", "persistence", "mean_frame")} for m in ("psnr", "ssim", "mse", "fg_psnr")}
    if probe is not None:
        per["state_err"] = {w: [] for w in ("model", "persistence", "mean_frame", "truth")}
    timings, kv, batch = [], [], 1
    first_pred = None
    kept = {"model": [], "truth": []}  # every rollout, for the recall and quality metrics
    n = frames.shape[0]
    bar = tqdm(total=n * seeds * n_gen, desc=desc, unit="frame", leave=False)
    for seed in range(seeds):
        for s in range(0, n, batch_size):
            gt = frames_to_tensor(frames[s : s + batch_size, :need]).to(device)  # (B, T, 3, H, W)
            act = torch.from_numpy(actions[s : s + batch_size, :need]).float().to(device)  # (B, T, A)
            g = torch.Generator(device="cpu").manual_seed(1_000_003 * seed + s)
            ctx, target = gt[:, :context_frames], gt[:, context_frames:]
            pred = rollout.run(ctx, act, n_gen, generator=g, progress=lambda k, b=gt.shape[0]: bar.update(k * b),
                               truth=target if teacher_forced else None)
            timings.append(list(rollout.timings))  # one entry per generated chunk
            if not kv:  # the cache holds the batch; its bytes are exactly B times one sequence's
                batch = gt.shape[0]
                kv = [t.kv_bytes // batch for t in rollout.timings]
            if first_pred is None:
                first_pred = (target[:strips].cpu(), pred[:strips].cpu())
            kept["model"].append(pred.cpu())
            if seed == 0:
                kept["truth"].append(gt.cpu())
            forecasts = {
                "model": pred,
                "persistence": metrics.persistence_forecast(ctx, n_gen),
                "mean_frame": metrics.mean_frame_forecast(mean_frame.to(device), gt.shape[0], n_gen),
            }
            for who, f in forecasts.items():
                per["psnr"][who].append(metrics.psnr(f, target).cpu())
                per["ssim"][who].append(metrics.ssim(f, target).cpu())
                per["mse"][who].append(metrics.mse(f, target).cpu())
                per["fg_psnr"][who].append(metrics.foreground_psnr(f, target, background.to(device)).cpu())
            if probe is not None:
                true = torch.from_numpy(states[s : s + batch_size, context_frames:need])  # (B, n_gen, S)
                for who, f in {**forecasts, "truth": target}.items():
                    per["state_err"][who].append(state_error(probe, f.cpu(), true, ctx[:, -1].cpu()))
    bar.close()
    # each (N, n_gen): the seeds of one episode averaged first; the episodes are the independent samples
    # of the standard errors (a deterministic baseline repeated per seed adds no evidence)
    cat = {m: {w: torch.cat(v).view(seeds, n, -1).nanmean(0) for w, v in d.items()} for m, d in per.items()}
    res = EvalResult(horizons=list(horizons), clip_frames=clip_frames, episodes=n, seeds=seeds,
                     context_frames=context_frames)
    slices = _bucket_slices(horizons, clip_frames)
    for m, d in cat.items():
        res.curves[m] = {w: torch.nanmean(x, 0).tolist() for w, x in d.items()}
        res.buckets[m] = {w: [metrics.mean_stderr(torch.nanmean(x[:, sl], 1)) for sl in slices] for w, x in d.items()}
    res.buckets["skill"] = {
        who: [
            metrics.mean_stderr(metrics.skill(cat["mse"][who][:, sl].mean(1), cat["mse"]["persistence"][:, sl].mean(1)))
            for sl in slices
        ]
        for who in ("model", "mean_frame")
    }
    fc = rollout.chunk_frames
    chunk_slices = [slice(sl.start // fc, sl.stop // fc) for sl in slices]
    for part in ("denoise_ms", "commit_ms", "total_ms"):
        res.ms_per_chunk[part.removesuffix("_ms")] = [
            statistics.median(getattr(t, part) for run in timings for t in run[cs]) for cs in chunk_slices
        ]
    truth = torch.cat(kept["truth"])  # (N, context + n_gen, 3, H, W)
    ctx_all, target_all = truth[:, :context_frames], truth[:, context_frames:]
    pred_all = torch.cat(kept["model"]).view(seeds, n, *target_all.shape[1:])[0]  # the first sampling seed
    gen = {"model": pred_all, "truth": target_all,
           "persistence": metrics.persistence_forecast(ctx_all, n_gen),
           "mean_frame": metrics.mean_frame_forecast(mean_frame.cpu(), n, n_gen)}
    res.quality = quality.quality(gen, target_all, ctx_all[:, -1], slices, probe=probe, reference=reference,
                                  actions=actions[:n, context_frames:need], step=step)
    if targets is not None:
        res.recall = memory_metrics.recall_with_oracle(gen, truth, targets, context_frames)
        if out_dir is not None:
            recall_report.save_return_strip(truth, torch.cat([ctx_all, pred_all], 1), targets, context_frames,
                                             Path(out_dir) / "returns.png")
    res.kv_bytes = kv
    res.peak_kv_bytes = max(kv) if kv else 0
    res.batch = batch
    if out_dir is not None and first_pred is not None:
        if strips:
            save_strip(first_pred[0], first_pred[1], Path(out_dir) / "strips.png", clip_frames)
        from worldkit.animation import save_rollouts

        k = max(strips, 2)  # the animation shows two episodes
        save_rollouts(Path(out_dir) / "rollouts.npz", tensor_to_frames(truth[:k]), tensor_to_frames(pred_all[:k]),
                      context_frames)
    return res


def save_strip(gt: Tensor, pred: Tensor, path: Path, clip_frames: int, columns: int = 12) -> None:
    """A PNG of ground truth over prediction for a few episodes at ``columns`` evenly spaced frames.

    gt, pred: (B, T, 3, H, W)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B, T = gt.shape[:2]
    cols = np.unique(np.linspace(0, T - 1, min(columns, T)).round().astype(int))
    fig, axes = plt.subplots(2 * B, len(cols), figsize=(len(cols) * 0.9, 2 * B * 0.95), squeeze=False)
    g, p = tensor_to_frames(gt), tensor_to_frames(pred)
    for b in range(B):
        for j, t in enumerate(cols):
            for row, img, name in ((2 * b, g, "truth"), (2 * b + 1, p, "model")):
                ax = axes[row][j]
                ax.imshow(img[b, t], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"{name} {b}", fontsize=6)
                if row == 0:
                    ax.set_title(f"t+{t + 1} ({(t + 1) / clip_frames:.1f}x)", fontsize=6)
    fig.tight_layout(pad=0.1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
