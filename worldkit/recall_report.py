"""Recall by gap presented: the table (``markdown``, with paired differences to a reference row), the
plot of recall against gap (``plot``) and strips of returns (``save_return_strip``: the last real
sighting, the truth and the forecast at each return). The scores come from ``memory_metrics``."""
from __future__ import annotations

import math
from typing import Optional

from torch import Tensor

from worldkit.frames import tensor_to_frames
from worldkit.memory_metrics import bucket_labels, bucket_of, gap_edges, paired_difference, returns
from worldkit.report import RANKED_BASELINES, save_figure

REFERENCES = {"truth": "ground truth (ceiling)", "oracle": "oracle (pastes the last real sighting)",
              "persistence": "persistence (copy last frame)", "mean_frame": "mean training frame"}


def markdown(rows: list[tuple[str, str, dict]], reference: Optional[str] = None) -> str:
    """The recall table: per row (name, memory described, its eval.json ``recall``) the colour recall
    per gap bucket and the false-alarm rate, the references below (from the first row). With
    ``reference`` (a row name), each row's paired difference to it per bucket, episode by episode;
    ``*`` marks a difference beyond two standard errors. Bold: the best recall per bucket among the
    models and the trivial baselines (persistence, mean frame)."""
    if not rows:
        return ""
    first = rows[0][2]
    labels = first["buckets"]
    ref = next((r for r in rows if r[0] == reference), None)
    lines = ["| forecast | memory | " + " | ".join(f"gap {b}" for b in labels) + " | false alarm ↓ |"
             + ("".join(f" vs `{reference}` gap {b.split()[0]} |" for b in labels) if ref else ""),
             "|---|---|" + "---|" * (len(labels) + 1 + (len(labels) if ref else 0))]
    # (label, memory, stats per bucket, false alarm, per-episode recall or None, ranked with the models)
    table = [(f"`{name}`", memory, rec["stats"]["colour"]["model"], rec["false_alarm"]["model"],
              rec["per_episode"]["colour"]["model"], True) for name, memory, rec in rows]
    table += [(label, "", first["stats"]["colour"][who], first["false_alarm"][who], None,
               who in RANKED_BASELINES)
              for who, label in REFERENCES.items() if who in first["stats"]["colour"]]
    best = [max((t[2][k][0] for t in table if t[5] and math.isfinite(t[2][k][0])), default=math.nan)
            for k in range(len(labels))]
    for name, memory, stats, fa, per_episode, ranked in table:
        cells = []
        for k, (m, se) in enumerate(stats):
            text = "-" if not math.isfinite(m) else f"{m:.2f} ± {se:.2f}" if math.isfinite(se) else f"{m:.2f}"
            cells.append(f"**{text}**" if ranked and math.isfinite(m) and m == best[k] else text)
        cells.append("-" if not math.isfinite(fa[0]) else f"{fa[0]:.2f} ± {fa[1]:.2f}")
        if ref:
            if per_episode is None or name == f"`{reference}`":
                cells += [""] * len(labels)
            else:
                for m, se, _ in paired_difference(per_episode, ref[2]["per_episode"]["colour"]["model"]):
                    star = "*" if math.isfinite(se) and abs(m) > 2 * se else ""
                    cells.append("-" if not math.isfinite(m) else f"{m:+.2f} ± {se:.2f}{star}")
        lines.append(f"| {name} | {memory} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{b}: {n}" for b, n in zip(labels, first["returns"]))
    return "\n".join([
        "Recall at returns: the share of objects back in view after a gap of that many frames that the forecast "
        "shows in the right palette colour within an eighth of the frame of the right place (mean ± standard error "
        "over episodes). False alarm: the share of frames where nothing can be in view but the forecast shows an "
        f"object. Returns scored per bucket: {counts}.", "", *lines, ""])


def plot(rows: list[tuple[str, str, dict]], path) -> None:
    """``recall_vs_gap.png``: colour recall against gap per row (error bars: one standard error), the
    references dashed."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    first = rows[0][2]
    gaps = first["gaps"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    colors = plt.get_cmap("tab10")
    for i, (name, memory, rec) in enumerate(rows):
        m, se = zip(*rec["stats"]["colour"]["model"])
        ax.errorbar(gaps, m, yerr=se, marker="o", capsize=3, color=colors(i % 10),
                    label=f"{name} ({memory})" if memory else name)
    for j, (who, label) in enumerate(REFERENCES.items()):
        if who in first["stats"]["colour"]:
            m, _ = zip(*first["stats"]["colour"][who])
            ax.plot(gaps, m, ls="--", color=str(0.15 + 0.2 * j), label=label)
    ax.set(xlabel="gap: frames the object was out of view", ylabel="recall (right colour, right place)",
           xscale="log", ylim=(-0.03, 1.03))
    ax.set_xticks(gaps, [str(g) for g in gaps])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the configured gaps are labelled
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    save_figure(fig, path)


def save_return_strip(truth: Tensor, forecast: Tensor, targets, first: int, path, episodes: int = 4) -> None:
    """A PNG per episode row: for each gap bucket's first return, the last real sighting, the truth at
    the return and the forecast at the return. truth, forecast: (N, T, 3, H, W) from frame 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges, labels = gap_edges(targets.gaps), bucket_labels(targets.gaps)
    n = min(episodes, truth.shape[0])
    fig, axes = plt.subplots(n, 3 * len(labels), figsize=(3 * len(labels) * 0.75, n * 0.95), squeeze=False)
    t_img, f_img = tensor_to_frames(truth[:n]), tensor_to_frames(forecast[:n])
    for e in range(n):
        picked = {}
        for t, i, gap in returns(targets.seen[e], first):
            picked.setdefault(bucket_of(gap, edges), (t, gap))
        for k in range(len(labels)):
            for j, name in enumerate(("seen", "truth", "model")):
                ax = axes[e][3 * k + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if k not in picked:
                    ax.axis("off")
                    continue
                t, gap = picked[k]
                img = {"seen": t_img[e, t - gap - 1], "truth": t_img[e, t], "model": f_img[e, t]}[name]
                ax.imshow(img, interpolation="nearest")
                if e == 0:
                    ax.set_title(f"{name}" + (f"\ngap {labels[k]}" if j == 1 else ""), fontsize=6)
    fig.tight_layout(pad=0.1)
    save_figure(fig, path)
