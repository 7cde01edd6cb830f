"""Recall scored by gap: does a forecast bring back what left the view, in the right colour, at the right place?

An env that supports it maps its recorded states to ``RecallTargets`` (``recall_targets`` classmethod;
the ``revisit_room`` env does): per frame and object whether it is in view, its pixel column and its
palette colour, and per frame whether no object can be in view. From those:

- a **return** is a generated frame where an object is back in view after ``gap`` frames out of it,
  having been seen before (in the context or in the truth's earlier frames);
- at each return a forecast frame is read by a pixel classifier (saturated pixels in the object rows,
  labelled with the nearest palette hue): **hit** = it shows an object within ``tol`` pixels of the
  true column (any colour), **colour** = the object shown there has the right palette colour (so a
  wrong colour scores hit 1, colour 0), **x error** = pixels from the true column to the nearest blob
  of the right colour (where one is shown);
- a **false alarm** is a generated frame where no object can be in view but the forecast shows one.

Returns are grouped by gap into buckets around the configured gaps (edges at the geometric midpoints),
averaged per episode, then reported as mean ± standard error over episodes. ``paired_difference``
compares two forecasts of the same episodes (episode by episode, the stronger test).

Reference forecasts scored the same way: the ground truth (the classifier's ceiling: hit about 1, false
alarm about 0), the mean training frame (shows nothing: hit 0), and ``oracle_forecast``, which pastes at
every frame the real frame seen earlier at the nearest heading (perfect memory, no imagination).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from worldkit.metrics import mean_stderr

@dataclass(frozen=True)
class RecallTargets:
    """Where each object of an episode is in each frame, for scoring recall (``memory_metrics``).

    seen, x, colour: (..., n) per frame and object: the object's centre is in the inner part of the
    view; its column in pixels (valid where seen); its palette index. absent, heading: (...,) per
    frame: no part of any object can be in view; the camera's heading (radians). ``palette`` (K, 3) in
    [0, 1], ``palette_hues`` (K,) degrees; ``rows`` the image rows where objects appear (the band
    scored); ``width`` the frame width in pixels; ``gaps`` the configured gaps (frames)."""

    seen: np.ndarray
    x: np.ndarray
    colour: np.ndarray
    absent: np.ndarray
    heading: np.ndarray
    palette: np.ndarray
    palette_hues: np.ndarray
    rows: tuple[int, int]
    width: int
    gaps: tuple[int, ...]

    PER_FRAME = ("seen", "x", "colour", "absent", "heading")  # indexed (episode, frame, ...)

    def first(self, n: int) -> "RecallTargets":
        """The targets of the first ``n`` episodes."""
        return dataclasses.replace(self, **{f: getattr(self, f)[:n] for f in self.PER_FRAME})

    def frames(self, t: int) -> "RecallTargets":
        """The targets of every episode's first ``t`` frames."""
        return dataclasses.replace(self, **{f: getattr(self, f)[:, :t] for f in self.PER_FRAME})


MIN_PIXELS = 3  # palette pixels that make an object "shown"
SATURATION = 0.75  # objects are fully saturated; the heading band and the walls are below this
VALUE = 0.25


def palette_labels(frames: Tensor, hues: np.ndarray, rows: tuple[int, int], hue_tol: float = 30.0) -> Tensor:
    """Per pixel of the object rows: the palette index of its hue, or -1 (not saturated or bright enough,
    or no palette hue within ``hue_tol`` degrees). frames: (..., 3, H, W) in [-1, 1] -> (..., h, W) long."""
    x = ((frames[..., rows[0] : rows[1], :].float() + 1) / 2).clamp(0, 1)  # (..., 3, h, W)
    r, g, b = x.unbind(-3)
    mx, mn = x.amax(-3), x.amin(-3)
    d = (mx - mn).clamp_min(1e-6)
    hue = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60
    sat = (mx - mn) / mx.clamp_min(1e-6)
    ref = torch.as_tensor(hues, dtype=hue.dtype, device=hue.device)  # (K,)
    dist = ((hue[..., None] - ref + 180) % 360 - 180).abs()  # (..., h, W, K) degrees
    best, label = dist.min(-1)
    ok = (sat > SATURATION) & (mx > VALUE) & (best <= hue_tol)
    return torch.where(ok, label, torch.full_like(label, -1))


def returns(seen: np.ndarray, first: int) -> list[tuple[int, int, int]]:
    """(frame, object, gap) of every return at frames >= ``first`` of one episode: the object is in view
    at ``frame``, was not at ``frame - 1``, and was last in view ``gap + 1`` frames before. Only objects
    seen before ``first`` (in the context) count: nothing else can be recalled. seen: (T, n) bool."""
    out = []
    T, n = seen.shape
    for i in range(n):
        if not seen[:first, i].any():
            continue
        last = -1
        for t in range(T):
            if seen[t, i]:
                if last >= 0 and last < t - 1 and t >= first:
                    out.append((t, i, t - last - 1))
                last = t
    return out


def gap_edges(gaps: tuple[int, ...]) -> list[float]:
    """Bucket edges between the sorted configured gaps: their geometric midpoints."""
    g = sorted(set(gaps))
    return [math.sqrt(a * b) for a, b in zip(g[:-1], g[1:])]


def bucket_of(gap: int, edges: list[float]) -> int:
    return int(np.searchsorted(edges, gap))


def bucket_labels(gaps: tuple[int, ...]) -> list[str]:
    """A label per bucket: the configured gap and the range of gaps it holds."""
    g, e = sorted(set(gaps)), gap_edges(gaps)
    lo = [1] + [math.floor(x) + 1 for x in e]
    hi = [math.floor(x) for x in e] + [None]
    return [f"{gap} ({a}-{b})" if b is not None else f"{gap} ({a}+)" for gap, a, b in zip(g, lo, hi)]


def score_returns(labels: Tensor, events: list[tuple[int, int, int]], x: np.ndarray, colour: np.ndarray,
                  tol: float) -> np.ndarray:
    """(hit, colour, x error) per event of one episode, (E, 3). labels: (T, h, W) long."""
    W = labels.shape[-1]
    cols = torch.arange(W, dtype=torch.float32)
    out = np.full((len(events), 3), np.nan)
    for e, (t, i, _) in enumerate(events):
        lab = labels[t]  # (h, W)
        near = (cols - float(x[t, i])).abs() <= tol  # (W,)
        shown = lab[:, near]
        found = shown[shown >= 0]
        hit = found.numel() >= MIN_PIXELS
        right = hit and int(torch.bincount(found).argmax()) == int(colour[t, i])
        mine = (lab == int(colour[t, i])).sum(0) > 0  # (W,) columns showing the right colour
        err = (cols[mine] - float(x[t, i])).abs().min().item() if bool(mine.any()) else math.nan
        out[e] = float(hit), float(right), err
    return out


def recall(forecasts: dict[str, Tensor], targets, first: int, tol: Optional[float] = None) -> dict[str, Any]:
    """Recall of every forecast, per gap bucket.

    forecasts: name -> (N, T, 3, H, W) in [-1, 1], the episodes' frames from frame 0 (context included,
    so frame indices match ``targets``); targets: the episodes' ``RecallTargets`` ((N, T, n) arrays);
    first: the first generated frame. Returns ``{"buckets": labels, "per_episode": {metric: {name:
    (N, K) list}}, "buckets_stats": {metric: {name: [(mean, se) per bucket]}}, "false_alarm": {name:
    (mean, se)}, "returns": counts per bucket}`` (NaN where an episode has no return in a bucket)."""
    tol = targets.width / 8 if tol is None else tol
    edges, labels_ = gap_edges(targets.gaps), bucket_labels(targets.gaps)
    K = len(labels_)
    N = targets.seen.shape[0]
    events = [returns(targets.seen[n], first) for n in range(N)]
    counts = [0] * K
    for ev in events:
        for _, _, gap in ev:
            counts[bucket_of(gap, edges)] += 1
    per_episode: dict[str, dict[str, list]] = {m: {} for m in ("hit", "colour", "x_err")}
    alarms: dict[str, tuple[float, float]] = {}
    for name, frames in forecasts.items():
        lab = palette_labels(frames, targets.palette_hues, targets.rows)  # (N, T, h, W)
        table = np.full((3, N, K), np.nan)
        fa = np.full(N, np.nan)
        for n in range(N):
            scores = score_returns(lab[n], events[n], targets.x[n], targets.colour[n], tol)  # (E, 3)
            b = np.array([bucket_of(g, edges) for _, _, g in events[n]], dtype=int)
            for k in range(K):
                if (b == k).any():
                    with warnings.catch_warnings():  # x error is NaN where nothing of the colour shows
                        warnings.simplefilter("ignore", RuntimeWarning)
                        table[:, n, k] = np.nanmean(scores[b == k], 0)
            empty = np.nonzero(targets.absent[n, first:])[0] + first  # frames where nothing can show
            if empty.size:
                fa[n] = float(((lab[n, empty] >= 0).flatten(1).sum(1) >= MIN_PIXELS).float().mean())
        for j, m in enumerate(("hit", "colour", "x_err")):
            per_episode[m][name] = table[j].tolist()
        alarms[name] = _mean_se(fa)
    stats = {m: {name: [_mean_se(np.asarray(v)[:, k]) for k in range(K)] for name, v in d.items()}
             for m, d in per_episode.items()}
    return {"buckets": labels_, "gaps": sorted(set(targets.gaps)), "returns": counts, "per_episode": per_episode,
            "stats": stats, "false_alarm": alarms}


def _mean_se(x) -> tuple[float, float]:
    return mean_stderr(torch.as_tensor(np.asarray(x, dtype=np.float64)))


def paired_difference(a: list, b: list) -> list[tuple[float, float, int]]:
    """Per bucket: mean and standard error of a - b over the episodes where both are defined, and how
    many episodes that is. a, b: (N, K) per-episode values of two forecasts of the same episodes."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = []
    for k in range(a.shape[1]):
        d = a[:, k] - b[:, k]
        d = d[np.isfinite(d)]
        m, se = _mean_se(d)
        out.append((m, se, int(d.size)))
    return out


def recall_with_oracle(generated: dict[str, Tensor], truth: Tensor, targets: RecallTargets, first: int) -> dict[str, Any]:
    """``recall`` of each generated continuation of the truth, beside the oracle. generated: name ->
    (N, G, 3, H, W), the frames after the first ``first`` true ones; truth: (N, first + G, 3, H, W);
    targets: the episodes' targets, cut here to the truth's frames."""
    whole = {who: torch.cat([truth[:, :first], f], 1) for who, f in generated.items()}
    whole["oracle"] = oracle_forecast(truth, targets.heading, first)
    return recall(whole, targets.frames(truth.shape[1]), first)


def oracle_forecast(truth: Tensor, heading: np.ndarray, first: int) -> Tensor:
    """At every frame t >= ``first``, the real frame s < t whose heading is nearest (the latest of
    equals): the last real sighting of what should be in view, pasted. Frames before ``first`` are the
    truth. truth: (N, T, 3, H, W); heading: (N, T) radians."""
    out = truth.clone()
    for n in range(truth.shape[0]):
        h = torch.as_tensor(heading[n], dtype=torch.float64)
        for t in range(first, truth.shape[1]):
            d = ((h[:t] - h[t] + math.pi) % (2 * math.pi) - math.pi).abs()  # (t,)
            s = int(t - 1 - torch.argmin(d.flip(0)))  # nearest heading, the latest on ties
            out[n, t] = truth[n, s]
    return out
