"""Long-horizon quality that the mean frame cannot win: distance between distributions, blur, freeze.

Past a few clips a chaotic world cannot be tracked frame by frame (a perfect simulator started with
the error two frames allow loses a pendulum's angle), so pixel errors there reward the mean frame.
What can still be judged is whether the forecast is a valid world:

- **Fréchet distance** between the forecast's frames and real frames, on the state probe's features
  (its penultimate layer, which reads what moves), per horizon bucket. The reference is a fixed sample
  of training frames; the truth's own distance to it, on the same number of frames, is the floor
  (real against real). A blur or a frozen frame has far too little spread and sits far above it.
  The standard error comes from resampling episodes (bootstrap).
- **Sharpness** (mean squared spatial gradient) and **motion** (mean absolute change from the frame
  before), each as a ratio to the truth's on the same frames: 1 is like the truth, below 1 blurs or
  freezes.
- **Physics residual**, for envs whose simulator step is known on what a frame shows
  (``Environment.observable_step``): the probe's reading of frame t-1 stepped with the true action,
  against its reading of frame t (RMS over the stepped dimensions), as a ratio to the same residual on
  the real frames. It asks whether the forecast still obeys the world's dynamics, not whether it tracks
  the truth; in the revisit room it is the heading following the turns (1: as consistent as real frames).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from worldkit.metrics import mean_stderr

BOOTSTRAP = 20  # resamples of episodes for the Fréchet distance's standard error


@torch.no_grad()
def probe_features(probe, frames: Tensor, first_prev: Tensor) -> Tensor:
    """The probe's penultimate features of every frame (read with the frame before it).
    frames: (B, T, 3, H, W) in [-1, 1]; first_prev: (B, 3, H, W) -> (B, T, F) float64 on the CPU."""
    from worldkit.probe import frame_pairs

    dev = next(probe.parameters()).device
    pairs = frame_pairs(frames.float(), first_prev.float())  # (B, T, 2, 3, H, W)
    B, T = pairs.shape[:2]
    out = [probe.features(p.to(dev)).double().cpu() for p in pairs.flatten(0, 1).split(512)]
    return torch.cat(out).view(B, T, -1)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, F) and b (M, F):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), in float64."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a = torch.cov(a.T) if a.shape[0] > 1 else torch.zeros(a.shape[1], a.shape[1], dtype=a.dtype)
    s_b = torch.cov(b.T) if b.shape[0] > 1 else torch.zeros(b.shape[1], b.shape[1], dtype=b.dtype)
    root_a = _sqrtm(s_a)
    cross = _sqrtm(root_a @ s_b @ root_a)
    return float((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * cross.trace())


def _sqrtm(s: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix."""
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def sharpness(frames: Tensor) -> Tensor:
    """Mean squared spatial gradient per frame: (..., 3, H, W) -> (...)."""
    x = frames.float()
    dx = (x[..., :, 1:] - x[..., :, :-1]).square().flatten(-3).mean(-1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).square().flatten(-3).mean(-1)
    return dx + dy


def motion(frames: Tensor, first_prev: Tensor) -> Tensor:
    """Mean absolute change from the frame before: (B, T, 3, H, W), (B, 3, H, W) -> (B, T)."""
    prev = torch.cat([first_prev[:, None].float(), frames[:, :-1].float()], 1)
    return (frames.float() - prev).abs().flatten(2).mean(-1)


@torch.no_grad()
def probe_readings(probe, frames: Tensor, first_prev: Tensor) -> Tensor:
    """What the probe reads from each frame, in the observable state's own units: (B, T, S')."""
    from worldkit.probe import frame_pairs

    dev = next(probe.parameters()).device
    pairs = frame_pairs(frames.float(), first_prev.float())  # (B, T, 2, 3, H, W)
    B, T = pairs.shape[:2]
    out = torch.cat([probe(p.to(dev)) for p in pairs.flatten(0, 1).split(512)]) * probe.std + probe.mean
    return out.view(B, T, -1).double().cpu()


def physics_residual(readings: Tensor, actions: np.ndarray, step) -> Tensor:
    """Per frame t >= 1: RMS over the stepped dimensions of readings[t] - step(readings[t-1], actions[t]);
    frame 0 is NaN. readings: (B, T, S'); actions: (B, T, A), actions[t] leads to frame t; step: an env's
    ``observable_step`` (config bound) -> (B, T)."""
    pred, dims = step(readings[:, :-1].numpy(), actions[:, 1:])  # (B, T-1, k)
    err = (readings[:, 1:, dims] - torch.as_tensor(pred, dtype=readings.dtype)).square().mean(-1).sqrt()
    return torch.cat([torch.full_like(err[:, :1], math.nan), err], 1)


def quality(forecasts: dict[str, Tensor], truth: Tensor, first_prev: Tensor, slices: list[slice], probe=None,
            reference: Optional[Tensor] = None, seed: int = 0, actions: Optional[np.ndarray] = None,
            step=None) -> dict:
    """Per forecast and horizon bucket: Fréchet distance to ``reference`` features (with a probe),
    sharpness and motion ratios to the truth, each (mean, standard error).

    forecasts: name -> (N, T, 3, H, W) generated frames (the truth among them gives the floor);
    truth: (N, T, 3, H, W); first_prev: (N, 3, H, W) the last context frame; slices: the horizon
    buckets over T; reference: (M, F) probe features of real frames; actions (N, T, A) and ``step`` (an
    env's ``observable_step``, config bound): the physics residual ratio, with a probe."""
    out: dict[str, dict] = {"sharpness": {}, "motion": {}}
    sharp_t, motion_t = sharpness(truth), motion(truth, first_prev)  # (N, T)
    for name, f in forecasts.items():
        s, m = sharpness(f), motion(f, first_prev)  # (N, T)
        out["sharpness"][name] = [mean_stderr(s[:, sl].mean(1) / sharp_t[:, sl].mean(1).clamp_min(1e-12))
                                  for sl in slices]
        out["motion"][name] = [mean_stderr(m[:, sl].mean(1) / motion_t[:, sl].mean(1).clamp_min(1e-12))
                               for sl in slices]
    if probe is not None and step is not None and actions is not None:
        real = physics_residual(probe_readings(probe, truth, first_prev), actions, step)  # (N, T)
        out["physics"] = {}
        for name, f in forecasts.items():
            res = physics_residual(probe_readings(probe, f, first_prev), actions, step)
            out["physics"][name] = [mean_stderr(torch.nanmean(res[:, sl], 1)
                                                / torch.nanmean(real[:, sl], 1).clamp_min(1e-12)) for sl in slices]
    if probe is None or reference is None:
        return out
    g = np.random.default_rng(seed)
    N = truth.shape[0]
    draws = [g.integers(0, N, N) for _ in range(BOOTSTRAP)]
    out["fd"] = {}
    for name, f in forecasts.items():
        feats = probe_features(probe, f, first_prev)  # (N, T, F)
        rows = []
        for sl in slices:
            per = feats[:, sl]  # (N, t, F)
            value = frechet_distance(per.flatten(0, 1), reference)
            boot = [frechet_distance(per[d].flatten(0, 1), reference) for d in draws]
            rows.append((value, float(np.std(boot, ddof=1))))
        out["fd"][name] = rows
    return out
