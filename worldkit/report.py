"""Reporting: the summary of a run or grid folder (TensorBoard logging: ``worldkit.tensorboard_log``).

Summary of a grid folder (``build``), from its cell folders alone: ``results.csv`` and ``results.md``
(one row per cell; best value per column marked, differences within two standard errors of the best
marked as not significant; failed cells marked) and plots ``psnr_vs_horizon.png`` and
``cost_vs_horizon.png``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from worldkit.cells import CELL, CELLS, DONE, ERROR, axis_labels, format_value
from worldkit.errors import WorldkitError
from worldkit.files import atomic_path, atomic_write
from worldkit.stages import final_stage

BASELINES = {"persistence": "persistence (copy last frame)", "mean_frame": "mean training frame",
             "truth": "ground truth (floor / ceiling)", "oracle": "oracle (pastes the last real sighting)"}
RANKED_BASELINES = ("persistence", "mean_frame")  # trivial forecasts a model must beat; truth and oracle are references


def kv_per_horizon(ev: dict) -> list[float]:
    """KV MiB held at the end of each horizon bucket (``kv_bytes`` has one entry per generated chunk)."""
    kv, clip, horizons = ev["kv_bytes"], ev["clip_frames"], ev["horizons"]
    if not kv:
        return [math.nan] * len(horizons)
    frames_per_chunk = max(horizons) * clip / len(kv)
    return [kv[max(0, round(h * clip / frames_per_chunk) - 1)] / 2**20 for h in horizons]


# --------------------------------------------------------------------------------------------------
# Grid summary


@dataclass
class CellResult:
    """What a cell folder says about its cell: status, and the last stage's results when it is done."""

    index: int
    name: str
    assignment: dict
    status: str  # done | failed | unfinished
    stage: str = ""
    summary: dict = field(default_factory=dict)  # the last stage's summary.json
    eval: dict = field(default_factory=dict)  # the last stage's eval.json
    wall_s: Optional[float] = None
    error: str = ""  # the last line of error.txt


def _last_stage(folder: Path) -> Optional[Path]:
    """The cell's result stage folder: its config's final stage (not a comparison variant)."""
    if (folder / "config.yaml").exists():
        from worldkit import config as wk_config

        return folder / "stages" / final_stage(wk_config.load(folder / "config.yaml")).dirname
    stages = [d for d in (folder / "stages").glob("*-*") if d.is_dir() and d.name.split("-")[0].isdigit()]
    return max(stages, key=lambda d: int(d.name.split("-")[0]), default=None)


def _batch_text(cells: list[CellResult]) -> str:
    """How many sequences the timed chunks decoded together, across the finished cells."""
    found = {c.eval.get("batch") for c in cells if c.status == "done"}
    sizes = sorted(b for b in found if b is not None)
    old = " (rows evaluated before the batch was recorded give the whole batch's KV and time)" if None in found else ""
    if not sizes:
        return old
    if len(sizes) == 1:
        return f"for a batch of {sizes[0]} sequence{'s' if sizes[0] > 1 else ''} decoded together{old}"
    return f"(batches of {', '.join(map(str, sizes))} sequences differ between rows: their ms/chunk do not compare){old}"


def read_cell(folder: Path) -> CellResult:
    """A cell's status and results from its folder (cell.json, done.json or error.txt, stages/)."""
    meta = json.loads((folder / CELL).read_text())
    cell = CellResult(meta["index"], meta["name"], meta["assignment"], "unfinished")
    if (folder / DONE).exists():
        cell.wall_s = json.loads((folder / DONE).read_text()).get("wall_s")
        last = _last_stage(folder)
        if last is not None and (last / "eval.json").exists() and (last / "summary.json").exists():
            cell.status, cell.stage = "done", last.name
            cell.summary = json.loads((last / "summary.json").read_text())
            cell.eval = json.loads((last / "eval.json").read_text())
        else:
            cell.status, cell.error = "failed", "finished without results (no stages/*/eval.json)"
    elif (folder / ERROR).exists():
        lines = [ln for ln in (folder / ERROR).read_text().splitlines() if ln.strip()]
        cell.status, cell.error = "failed", lines[-1].strip() if lines else "failed"
    return cell


def collect(grid_dir: Union[str, Path]) -> list[CellResult]:
    """Every cell of the grid folder, in grid order."""
    cells_dir = Path(grid_dir) / CELLS
    if not cells_dir.is_dir():
        raise WorldkitError(f"{grid_dir}: not a grid folder (no {CELLS}/); a grid folder is made by "
                            "`worldkit run` of an experiment with a grid:")
    return sorted((read_cell(d) for d in cells_dir.iterdir() if (d / CELL).exists()), key=lambda c: c.index)


@dataclass(frozen=True)
class Column:
    """A ranked column of the results table."""

    header: str
    key: str  # in summary.json
    se_key: Optional[str]  # its standard error, when it has one
    higher_is_better: bool
    fmt: str
    target: Optional[float] = None  # best is closest to this value (a ratio to the truth's), not the largest

    @property
    def label(self) -> str:
        """The header with the direction that is better: ↑, ↓ or →1."""
        arrow = f"→{self.target:g}" if self.target is not None else "↑" if self.higher_is_better else "↓"
        return f"{self.header} {arrow}"

    def badness(self, value: float) -> float:
        """Smaller is better."""
        if self.target is not None:
            return abs(value - self.target)
        return -value if self.higher_is_better else value


def columns(cells: list[CellResult]) -> list[Column]:
    """The table's metric columns for the horizons the finished cells were evaluated at. PSNR (and the
    other tracking metrics) compare frame by frame with the truth, which is fair only while the truth is
    predictable; the Fréchet distance, sharpness and motion judge a valid world at any horizon; recall
    (longest gap) and false alarms judge memory."""
    horizons = sorted({h for c in cells for h in c.eval.get("horizons", [])})
    if not horizons:
        return []
    h = horizons[-1]
    cols = [Column(f"PSNR@{x}x", f"psnr@{x}x", f"psnr_se@{x}x", True, ".2f") for x in horizons]
    cols += [Column(f"SSIM@{h}x", f"ssim@{h}x", f"ssim_se@{h}x", True, ".3f"),
             Column(f"FG-PSNR@{h}x", f"fg_psnr@{h}x", f"fg_psnr_se@{h}x", True, ".2f"),
             Column(f"skill@{h}x", f"skill@{h}x", f"skill_se@{h}x", True, "+.3f"),
             Column(f"state err@{h}x", f"state_err@{h}x", f"state_err_se@{h}x", False, ".3f"),
             Column(f"FD@{h}x", f"fd@{h}x", f"fd_se@{h}x", False, ".3f"),
             Column(f"sharpness@{h}x", f"sharpness@{h}x", f"sharpness_se@{h}x", False, ".2f", target=1.0),
             Column(f"motion@{h}x", f"motion@{h}x", f"motion_se@{h}x", False, ".2f", target=1.0),
             Column(f"physics@{h}x", f"physics@{h}x", f"physics_se@{h}x", False, ".2f", target=1.0)]
    gaps = sorted({int(k.split("@")[1]) for c in cells for k in c.summary if k.startswith("recall@")})
    if gaps:
        cols += [Column(f"recall@gap {gaps[-1]}", f"recall@{gaps[-1]}", f"recall_se@{gaps[-1]}", True, ".2f"),
                 Column("false alarm", "false_alarm", "false_alarm_se", False, ".2f")]
    cols += [Column("ms/chunk", "ms_per_chunk", None, False, ".1f"),
             Column("KV MiB", "kv_mib", None, False, ".3f")]
    return [c for c in cols if any(c.key in cell.summary for cell in cells)]


def _value(summary: dict, key: Optional[str]) -> float:
    v = summary.get(key, math.nan) if key else math.nan
    return float(v) if isinstance(v, (int, float)) else math.nan


def marks(cells: list[CellResult], col: Column, baselines: Optional[dict[str, dict]] = None) -> dict[str, str]:
    """Per row name (cells, and the ``baselines`` given as name -> summary-like dict): ``best``, ``tie``
    (within two standard errors of the best: not significantly different, so not ranked) or ``""``.
    The standard error of a difference is sqrt(se_a^2 + se_b^2). Baselines are ranked with the models,
    so a trivial forecast that wins is bold, not hidden."""
    vals = {c.name: (_value(c.summary, col.key), _value(c.summary, col.se_key)) for c in cells if c.status == "done"}
    vals.update({n: (_value(b, col.key), _value(b, col.se_key)) for n, b in (baselines or {}).items()})
    finite = {n: v for n, v in vals.items() if math.isfinite(v[0])}
    if not finite:
        return {}
    best_name = min(finite, key=lambda n: col.badness(finite[n][0]))
    best, best_se = finite[best_name]
    out = {}
    for n, (v, se) in finite.items():
        if math.isclose(col.badness(v), col.badness(best), rel_tol=1e-6, abs_tol=1e-12):  # float32 noise ties
            out[n] = "best"
        elif (math.isfinite(se) and math.isfinite(best_se)
              and abs(col.badness(v) - col.badness(best)) <= 2 * math.hypot(se, best_se)):
            out[n] = "tie"
        else:
            out[n] = ""
    return out


def _cell_text(summary: dict, col: Column, mark: str = "") -> str:
    v = _value(summary, col.key)
    if not math.isfinite(v):
        return "-"
    text = format(v, col.fmt)
    se = _value(summary, col.se_key)
    if math.isfinite(se):
        text += f" ± {format(se, col.fmt.lstrip('+'))}"
    return f"**{text}**" if mark == "best" else f"{text} ≈" if mark == "tie" else text


def _baseline_rows(cells: list[CellResult]) -> dict[str, list[dict]]:
    """Per baseline, its figures as a summary-like dict from each finished cell that scored it: the
    per-horizon metrics, the quality metrics (the truth's Fréchet distance is the floor) and recall."""
    out: dict[str, list[dict]] = {}
    for c in cells:
        if c.status != "done":
            continue
        ev = c.eval
        for who in BASELINES:
            row = {}
            per_horizon = {**ev.get("buckets", {}), **ev.get("quality", {})}
            for metric, by_who in per_horizon.items():
                for h, (m, se) in zip(ev["horizons"], by_who.get(who, [])):
                    row[f"{metric}@{h}x"], row[f"{metric}_se@{h}x"] = m, se
            recall = ev.get("recall") or {}
            for gap, (m, se) in zip(recall.get("gaps", []), recall.get("stats", {}).get("colour", {}).get(who, [])):
                row[f"recall@{gap}"], row[f"recall_se@{gap}"] = m, se
            if who in recall.get("false_alarm", {}):
                row["false_alarm"], row["false_alarm_se"] = recall["false_alarm"][who]
            if row:
                out.setdefault(who, []).append(row)
    return out


def baseline_summaries(cells: list[CellResult]) -> dict[str, dict]:
    """The baselines' figures, for each baseline that every finished cell scored identically."""
    return {who: rows[0] for who, rows in _baseline_rows(cells).items() if all(r == rows[0] for r in rows)}


def markdown(cells: list[CellResult], title: str) -> str:
    """``results.md``: one row per cell, the baselines below; the best per column in bold, baselines
    ranked with the models (⚑ marks a baseline that beats every model)."""
    axes = list(cells[0].assignment) if cells else []
    labels = axis_labels(axes)
    cols = columns(cells)
    baselines = baseline_summaries(cells)
    ranked = {BASELINES[w]: b for w, b in baselines.items() if w in RANKED_BASELINES}
    marked = {c.key: marks(cells, c, ranked) for c in cols}
    head = ["cell", "status", *(labels[a] for a in axes), *(c.label for c in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        row = [f"`{cell.name}`", cell.status.upper() if cell.status == "failed" else cell.status]
        row += [format_value(cell.assignment.get(a)) for a in axes]
        row += [_cell_text(cell.summary, c, marked[c.key].get(cell.name, "")) for c in cols]
        lines.append("| " + " | ".join(row) + " |")
    flagged = []
    for who, summary in baselines.items():
        name = BASELINES[who]
        row = [name, "baseline" if who in RANKED_BASELINES else "reference", *([""] * len(axes))]
        for c in cols:
            mark = marked[c.key].get(name, "")
            text = _cell_text(summary, c, mark)
            if mark == "best":
                text += " ⚑"
                flagged.append(c.label)
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    counts = {s: sum(c.status == s for c in cells) for s in ("done", "failed", "unfinished")}
    text = [
        f"# Results: {title}", "",
        f"{len(cells)} rows: {counts['done']} done, {counts['failed']} failed, {counts['unfinished']} unfinished. "
        "Scored on the held-out test episodes (mean ± standard error); a grid cell's row is the last stage of "
        "its chain (not a compare: variant).",
        "**Bold**: best in the column, the trivial baselines (persistence, mean frame) ranked with the models; "
        "↑ higher is better, ↓ lower, →1 closest to the truth's (a ratio). ≈: within two standard errors of the "
        "best (the difference is not significant, so it is not ranked). ⚑: a baseline beats every model. "
        "The ground truth and the oracle are references, not ranked: the truth's Fréchet distance is the "
        "floor (real against real), its recall the ceiling. PSNR, SSIM, skill and state error compare frame by "
        "frame with the truth: fair while the truth is predictable (short horizons, or a world without chaos). "
        "ms/chunk is the median wall time of one chunk"
        f"{(' ' + _batch_text(cells)).rstrip()}; KV MiB is the exact cache of one sequence. Neither has an "
        "error estimate.", "", *lines, "",
    ]
    if flagged:
        text += [f"⚑ A trivial baseline beats every model in: {', '.join(dict.fromkeys(flagged))}.", ""]
    if len(baselines) < len(_baseline_rows(cells)):
        text += ["The cells scored the baselines differently (different test episodes), so they are not shown.", ""]
    failed = [c for c in cells if c.status == "failed"]
    if failed:
        text += ["Failed cells:", ""] + [f"- `{c.name}`: {c.error} (cells/{c.name}/error.txt)" for c in failed] + [""]
    text += ["Plots: psnr_vs_horizon.png (PSNR and foreground PSNR per horizon, error bars: one standard error), "
             "cost_vs_horizon.png (ms per chunk and KV MiB per horizon).", ""]
    return "\n".join(text)


def csv_text(cells: list[CellResult]) -> str:
    """``results.csv``: one row per cell, its grid values, every scalar of its last stage, status, error."""
    axes = list(cells[0].assignment) if cells else []
    labels = axis_labels(axes)
    keys: list[str] = []
    for c in cells:
        keys += [k for k, v in c.summary.items() if k not in keys and isinstance(v, (int, float))]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "cell", "status", *(labels[a] for a in axes), "stage", *keys, "wall_s", "error"])
    for c in cells:
        w.writerow([c.index, c.name, c.status, *(format_value(c.assignment.get(a)) for a in axes), c.stage,
                    *(c.summary.get(k, "") for k in keys), "" if c.wall_s is None else c.wall_s, c.error])
    return buf.getvalue()


def save_figure(fig, path: Union[str, Path]) -> None:
    """Write a matplotlib figure as a PNG atomically (its folder made) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plots(cells: list[CellResult], out_dir: Union[str, Path]) -> list[Path]:
    """``psnr_vs_horizon.png`` (PSNR and foreground PSNR, error bars) and ``cost_vs_horizon.png``
    (ms per chunk, KV MiB), one line per finished cell, the baselines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [c for c in cells if c.status == "done"]
    if not done:
        return []
    colors = plt.get_cmap("tab20" if len(done) > 10 else "tab10")
    out_dir = Path(out_dir)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric, label in zip(axes, ("psnr", "fg_psnr"), ("PSNR (dB)", "foreground PSNR (dB)")):
        for i, c in enumerate(done):
            by_who = c.eval.get("buckets", {}).get(metric, {})
            if "model" in by_who:
                m, se = zip(*by_who["model"])
                ax.errorbar(c.eval["horizons"], m, yerr=se, marker="o", capsize=3, color=colors(i % colors.N),
                            label=c.name)
        for j, who in enumerate(baseline_summaries(cells)):
            by_who = done[0].eval["buckets"].get(metric, {})
            if who in by_who:
                m, _ = zip(*by_who[who])
                ax.plot(done[0].eval["horizons"], m, ls="--", color=str(0.2 + 0.3 * j), label=BASELINES[who])
        ax.set(xlabel="horizon (x training clip)", ylabel=label, xscale="log")
        ax.set_xticks(done[0].eval["horizons"], [f"{h}x" for h in done[0].eval["horizons"]])
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    psnr_path = out_dir / "psnr_vs_horizon.png"
    save_figure(fig, psnr_path)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, c in enumerate(done):
        kw = dict(marker="o", color=colors(i % colors.N), label=c.name)
        ms = c.eval["ms_per_chunk"].get("total", [math.nan] * len(c.eval["horizons"]))
        axes[0].plot(c.eval["horizons"], ms, **kw)
        axes[1].plot(c.eval["horizons"], kv_per_horizon(c.eval), **kw)
    for ax, label in zip(axes, ("ms per chunk (median)", "KV cache MiB at the end of the horizon")):
        ax.set(xlabel="horizon (x training clip)", ylabel=label, xscale="log")
        ax.set_xticks(done[0].eval["horizons"], [f"{h}x" for h in done[0].eval["horizons"]])
        ax.grid(alpha=0.3)
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7)
    cost_path = out_dir / "cost_vs_horizon.png"
    save_figure(fig, cost_path)
    return [psnr_path, cost_path]


def build(grid_dir: Union[str, Path]) -> str:
    """Rebuild results.csv, results.md and the plots of a grid folder from its cell folders; returns the markdown."""
    grid_dir = Path(grid_dir)
    cells = collect(grid_dir)
    md = markdown(cells, grid_dir.name)
    atomic_write(grid_dir / "results.csv", csv_text(cells))
    atomic_write(grid_dir / "results.md", md)
    plots(cells, grid_dir)
    return md
