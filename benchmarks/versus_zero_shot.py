"""Trained weights against the same plugins read zero-shot: the table of benchmarks/RESULTS.md's rollout
training sections, from finished run folders.

    python benchmarks/versus_zero_shot.py RUN [RUN ...] --zero-shot RUN0

Every stage named ``<policy>_<suffix>`` in a RUN (``sparse_forcing_dmd``, ``window_4_teacher``, ...) is a
trained row; its reference is the stage ``<policy>_zero_shot`` of RUN0 (the evaluation is seeded, so a
zero-shot row read in one run stands for every run on the same episodes). Each cell is mean ± standard
error, and in parentheses Δ: trained minus zero-shot in units of the two standard errors combined
(unpaired; |Δ| >= 2 is beyond the errors).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

COLUMNS = (("PSNR@6x ↑", "psnr@6x", 1), ("FD@6x ↓", "fd@6x", 1), ("sharpness@6x →1", "sharpness@6x", 2),
           ("physics@6x →1", "physics@6x", 2), ("false alarm ↓", "false_alarm", 2))
GAPS = (8, 16, 32, 64)
ZERO_SHOT = "_zero_shot"


def stages(run: Path) -> dict[str, dict]:
    """Each finished stage's summary by stage name (its folder ``<index>-<name>`` without the index)."""
    out = {}
    for path in sorted(run.glob("stages/*/summary.json"), key=lambda p: int(p.parent.name.split("-", 1)[0])):
        summary = json.loads(path.read_text())
        out[summary["stage"].split("-", 1)[1]] = summary
    return out


def error(summary: dict, key: str) -> float:
    return summary[key.replace("@", "_se@") if "@" in key else key + "_se"]


def delta(trained: dict, zero: dict, key: str) -> float:
    """Trained minus zero-shot in combined standard errors."""
    return (trained[key] - zero[key]) / math.hypot(error(trained, key), error(zero, key))


def cell(summary: dict, key: str, digits: int, zero: dict | None = None) -> str:
    text = f"{summary[key]:.{digits}f} ± {error(summary, key):.{digits}f}"
    return text if zero is None else f"{text} ({delta(summary, zero, key):+.1f})"


def table(runs: list[Path], zero_run: Path) -> str:
    zero = {name[: -len(ZERO_SHOT)]: s for name, s in stages(zero_run).items() if name.endswith(ZERO_SHOT)}
    head = ["policy", "weights", *(c[0] for c in COLUMNS[:4]), "recall gap " + " / ".join(map(str, GAPS)) + " ↑",
            COLUMNS[4][0]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for policy, ref in zero.items():
        rows = [("zero-shot", ref, None)]
        for run in runs:
            for name, summary in stages(run).items():
                if name != policy + ZERO_SHOT and name.rpartition("_")[0] == policy:
                    rows.append((f"{name} (`{run.name}`)", summary, ref))
        if len(rows) == 1:
            continue
        for weights, summary, against in rows:
            recall = " / ".join(f"{summary[f'recall@{g}']:.2f}" for g in GAPS)
            cells = [cell(summary, key, digits, against) for _, key, digits in COLUMNS]
            lines.append("| " + " | ".join([policy, weights, *cells[:4], recall, cells[4]]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with trained stages")
    parser.add_argument("--zero-shot", required=True, type=Path, help="the run folder with the *_zero_shot stages")
    args = parser.parse_args(argv)
    text = table(args.runs, args.zero_shot)
    print(text)
    return text


if __name__ == "__main__":
    main()
