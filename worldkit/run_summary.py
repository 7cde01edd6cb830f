"""The results of one run: ``results.md`` and ``results.csv`` over its evaluated stages (the baselines
beside them), the plots, the rollout animation and the recall-by-gap table, read back from the stage
folders (``eval.json``, ``summary.json``, ``rollouts.npz``) that ``experiment`` writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from worldkit import registry, report
from worldkit.files import atomic_write
from worldkit.interfaces import STAGE_KINDS
from worldkit.stages import Stage


def _compact(kind: str, spec: dict) -> dict:
    """A plugin spec with only the fields that differ from the plugin's defaults."""
    defaults = registry.get(kind, spec["type"]).Config().model_dump(mode="json")
    return {"type": spec["type"], **{k: v for k, v in spec.items() if k != "type" and defaults.get(k) != v}}


def describe_memory(spec: dict) -> str:
    """A memory spec in a few words: its name and the settings that differ from the defaults."""
    c = _compact("memory", spec)
    return c["type"] + (" " + ", ".join(f"{k}={v}" for k, v in c.items() if k != "type") if len(c) > 1 else "")


def write_summary(stages: list[Stage], run_dir: Path, title: str, reference: Optional[str] = None,
                  kinds: tuple[str, ...] = STAGE_KINDS) -> str:
    """results.md, results.csv and the plots (PSNR vs horizon, ms per chunk and KV MiB vs horizon, and
    recall vs gap where the env has recall targets) of every evaluated stage, the baselines beside
    them; prints and returns the markdown. ``reference``: the stage or variant name the recall table
    compares every row with (paired by episode)."""
    from worldkit import recall_report

    cells, recall_rows = [], []
    for st in stages:
        sd = run_dir / "stages" / st.dirname
        if not (sd / "eval.json").exists() or not (sd / "summary.json").exists():
            continue
        assignment = {kind: _compact(kind, getattr(st, kind)) for kind in kinds}
        ev = json.loads((sd / "eval.json").read_text())
        cells.append(report.CellResult(st.index, st.dirname, assignment, "done", st.dirname,
                                       json.loads((sd / "summary.json").read_text()), ev))
        if ev.get("recall"):
            recall_rows.append((st.name, describe_memory(st.memory), ev["recall"]))
    if not cells:
        return ""
    md = report.markdown(cells, title)
    from worldkit.animation import rollouts_gif, rollouts_mp4

    kept = [(c.name, run_dir / "stages" / c.stage / "rollouts.npz") for c in cells]
    if rollouts_gif(kept, run_dir / "rollouts.gif"):
        mp4 = " and rollouts.mp4" if rollouts_mp4(kept, run_dir / "rollouts.mp4") else ""
        md += (f"\nAnimation: rollouts.gif{mp4} (the truth beside every row's forecast, two test episodes, "
               "context frames marked).\n")
    if recall_rows:
        md += "\n## Recall by gap\n\n" + recall_report.markdown(recall_rows, reference)
        md += ("\nPlot: recall_vs_gap.png. Strips of returns (the last real sighting, the truth and the "
               "forecast at the return, per gap): stages/*/returns.png.\n")
        recall_report.plot(recall_rows, run_dir / "recall_vs_gap.png")
    atomic_write(run_dir / "results.md", md)
    atomic_write(run_dir / "results.csv", report.csv_text(cells))
    report.plots(cells, run_dir)
    print(md, flush=True)
    return md
