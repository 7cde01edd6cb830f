"""Which memory policy to train with, which to serve with: weights trained under each policy, each read
under every deploy policy of one experiment, as tables and heatmaps.

    python benchmarks/train_deploy.py DEPLOY.yaml --weights NAME=WEIGHTS [NAME=WEIGHTS ...]
                                      [--evaluated NAME=EVAL_DIR ...] --out DIR

DEPLOY.yaml is an experiment whose stages and variants are the deploy policies (the main job,
``experiments/sparse_forcing.yaml``, is one). Each ``--weights`` (a model.pt or a shipped base) is scored
as it is under every one of them (``worldkit eval``) into ``DIR/NAME``; a folder that already holds
every deploy policy's ``eval.json`` is read, not evaluated again, so an interrupted matrix resumes.
``--evaluated NAME=EVAL_DIR`` reads a folder evaluated before (for instance the main job's own run, which
is the shipped base read zero-shot under every policy). Writes ``DIR/matrix.md`` (one table per metric:
rows the training, columns the deployment, mean ± standard error over test episodes) and
``DIR/matrix_<metric>.png`` heatmaps. Metrics: recall at returns beyond the window (the mean over
episodes of the colour recall at gaps >= ``--beyond``), PSNR and Fréchet distance at the longest horizon.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from worldkit.stages import parse_dirname

METRICS = {  # name: (title, higher is better)
    "recall": ("recall at returns beyond the window", True),
    "psnr": ("PSNR dB at the longest horizon", True),
    "fd": ("Fréchet distance at the longest horizon", False),
}


def read_eval(path: Path, beyond: int) -> dict[str, tuple[float, float]]:
    """The matrix's metrics from one stage's eval.json: name -> (mean, standard error)."""
    ev = json.loads(Path(path).read_text())
    out = {"psnr": tuple(ev["buckets"]["psnr"]["model"][-1])}
    fd = ev.get("quality", {}).get("fd", {}).get("model")
    if fd:
        out["fd"] = tuple(fd[-1])
    rec = ev.get("recall")
    if rec:
        cols = [i for i, g in enumerate(rec["gaps"]) if g >= beyond]
        per = np.array(rec["per_episode"]["colour"]["model"], dtype=float)[:, cols]  # (episodes, gaps)
        seen = ~np.isnan(per)
        per = np.where(seen, per, 0).sum(1)[seen.any(1)] / seen.sum(1)[seen.any(1)]  # episodes with a return there
        if per.size:
            se = per.std(ddof=1) / math.sqrt(per.size) if per.size > 1 else float("nan")
            out["recall"] = (float(per.mean()), float(se))
    return out


def read_folder(folder: Path, deploy: list[str], beyond: int) -> dict[str, dict]:
    """deploy name -> metrics, from ``folder/stages/<i>-<name>/eval.json``; missing stages are left out."""
    found = {}
    for d in sorted((Path(folder) / "stages").glob("*/eval.json")):
        name = parse_dirname(d.parent.name)[1]
        if name in deploy:
            found[name] = read_eval(d, beyond)
    return found


def matrix_markdown(cells: dict, trained: list[str], deploy: list[str], metric: str) -> str:
    title, higher = METRICS[metric]
    lines = [f"**{title}** ({'higher' if higher else 'lower'} is better; rows: trained under, columns: "
             "deployed under; bold: the best deployment of each row)", "",
             "| trained \\ deployed | " + " | ".join(deploy) + " |", "|---" * (len(deploy) + 1) + "|"]
    for t in trained:
        vals = [cells.get(t, {}).get(d, {}).get(metric) for d in deploy]
        finite = [v[0] for v in vals if v is not None and not math.isnan(v[0])]
        best = (max if higher else min)(finite) if finite else None
        row = []
        for v in vals:
            if v is None:
                row.append("-")
                continue
            s = f"{v[0]:.2f} ± {v[1]:.2f}" if not math.isnan(v[1]) else f"{v[0]:.2f}"
            row.append(f"**{s}**" if v[0] == best else s)
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def heatmap(cells: dict, trained: list[str], deploy: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title, higher = METRICS[metric]
    m = np.full((len(trained), len(deploy)), np.nan)
    for i, t in enumerate(trained):
        for j, d in enumerate(deploy):
            v = cells.get(t, {}).get(d, {}).get(metric)
            if v is not None:
                m[i, j] = v[0]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(deploy), 1.2 + 0.6 * len(trained)))
    im = ax.imshow(m, cmap="viridis" if higher else "viridis_r", aspect="auto")
    ax.set_xticks(range(len(deploy)), deploy, rotation=35, ha="right")
    ax.set_yticks(range(len(trained)), trained)
    ax.set_xlabel("deployed under")
    ax.set_ylabel("trained under")
    mid = np.nanmean(m) if np.isfinite(m).any() else 0.0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if not np.isnan(m[i, j]):
                light = (m[i, j] > mid) == higher  # the bright end of the colour map
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="k" if light else "w", fontsize=8)
    ax.set_title(title + (" (higher is better)" if higher else " (lower is better)"), fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for it in items or []:
        name, sep, value = it.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"{flag}: expected NAME=VALUE, got {it!r}")
        out.append((name, value))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("deploy", help="experiment YAML whose stages and variants are the deploy policies")
    ap.add_argument("--weights", nargs="*", default=[], help="NAME=WEIGHTS (a model.pt or a shipped base)")
    ap.add_argument("--evaluated", nargs="*", default=[], help="NAME=EVAL_DIR evaluated before")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override DEPLOY.yaml")
    ap.add_argument("--beyond", type=int, default=8, help="the recall column averages gaps >= this many frames")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from worldkit import config as wk_config
    from worldkit import experiment
    from worldkit.experiment import resolve_stages

    cfg = wk_config.load(args.deploy, args.set)
    deploy = [s.name for s in resolve_stages(cfg)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells, trained = {}, []
    for name, folder in pairs(args.evaluated, "--evaluated"):
        cells[name] = read_folder(Path(folder), deploy, args.beyond)
        trained.append(name)
    for name, weights in pairs(args.weights, "--weights"):
        folder = out / name
        have = read_folder(folder, deploy, args.beyond) if folder.exists() else {}
        if set(have) != set(deploy):
            print(f"== {name}: {weights} under {len(deploy)} deploy policies -> {folder}", file=sys.stderr, flush=True)
            folder.mkdir(parents=True, exist_ok=True)
            experiment.evaluate_weights(cfg, weights, folder)
            have = read_folder(folder, deploy, args.beyond)
        cells[name] = have
        trained.append(name)
    metrics = [m for m in METRICS if any(m in v for c in cells.values() for v in c.values())]
    text = [f"# Train x deploy: {Path(args.deploy).name}", "",
            f"Deploy policies: the stages and variants of `{args.deploy}`"
            + (f" (with {' '.join(args.set)})" if args.set else "") + f"; recall beyond the window: gaps >= {args.beyond}.",
            ""]
    for m in metrics:
        text += [matrix_markdown(cells, trained, deploy, m), "", f"![{m}](matrix_{m}.png)", ""]
        heatmap(cells, trained, deploy, m, out / f"matrix_{m}.png")
    (out / "matrix.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
