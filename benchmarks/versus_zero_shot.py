"""Trained weights against the same plugins read zero-shot: the table of benchmarks/RESULTS.md's rollout
training sections, from finished run folders.

    python benchmarks/versus_zero_shot.py RUN [RUN ...] --zero-shot RUN0 [--pool] [--only STAGE ...]

Every stage named ``<policy>_<suffix>`` in a RUN (``sparse_forcing_dmd``, ``window_4_teacher``, ...) is a
trained row; its reference is the stage ``<policy>_zero_shot`` of RUN0 (the evaluation is seeded, so a
zero-shot row read in one run stands for every run on the same episodes). Each cell is mean ± standard
error, and in parentheses Δ: trained minus zero-shot in units of the two standard errors combined
(unpaired; |Δ| >= 2 is beyond the errors).

``--pool`` folds the runs that trained the same stage (other seeds of one recipe) into one row: the mean
over the runs ± the standard error over them (the spread between seeds, which one run's bootstrap error
over episodes does not show), their count n, and Δ against the zero-shot row in the seed error and the
zero-shot row's error combined. The recall cells are means over the runs. A stage trained in one run
only keeps its own row (its error over episodes), labelled so. ``--only`` keeps the trained stages of
those names (a run that continued some stages of a copied run also holds the copied, finished others).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from worldkit.stages import parse_dirname

COLUMNS = (("PSNR@6x ↑", "psnr@6x", 1), ("FD@6x ↓", "fd@6x", 1), ("sharpness@6x →1", "sharpness@6x", 2),
           ("motion@1x →1", "motion@1x", 2), ("physics@6x →1", "physics@6x", 2), ("false alarm ↓", "false_alarm", 2))
GAPS = (8, 16, 32, 64)
ZERO_SHOT = "_zero_shot"


def stages(run: Path) -> dict[str, dict]:
    """Each finished stage's summary by stage name (its folder ``<index>-<name>`` without the index)."""
    out = {}
    for path in sorted(run.glob("stages/*/summary.json"), key=lambda p: parse_dirname(p.parent.name)[0]):
        summary = json.loads(path.read_text())
        out[parse_dirname(summary["stage"])[1]] = summary
    return out


def error_key(key: str) -> str:
    """The summary key of a metric's standard error: ``fd@6x`` -> ``fd_se@6x``, ``false_alarm`` -> ``false_alarm_se``."""
    return key.replace("@", "_se@") if "@" in key else key + "_se"


def error(summary: dict, key: str) -> float:
    return summary[error_key(key)]


def delta(trained: dict, zero: dict, key: str) -> float:
    """Trained minus zero-shot in combined standard errors."""
    return (trained[key] - zero[key]) / math.hypot(error(trained, key), error(zero, key))


def cell(summary: dict, key: str, digits: int, zero: dict | None = None) -> str:
    text = f"{summary[key]:.{digits}f} ± {error(summary, key):.{digits}f}"
    return text if zero is None else f"{text} ({delta(summary, zero, key):+.1f})"


def pooled(name: str, summaries: list[dict]) -> dict:
    """One summary for several runs of the same stage: each metric's mean over the runs, and as its error
    the standard error over the runs (sample standard deviation / sqrt(n))."""
    n = len(summaries)
    if n < 2:
        raise ValueError(f"{name}: pooling needs at least two runs, got {n}")
    out = {"n": n}
    for _, key, _ in COLUMNS:
        values = [s[key] for s in summaries]
        mean = sum(values) / n
        out[key] = mean
        out[error_key(key)] = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)
    for g in GAPS:
        out[f"recall@{g}"] = sum(s[f"recall@{g}"] for s in summaries) / n
    return out


def table(runs: list[Path], zero_run: Path, pool: bool = False, only: list[str] | None = None) -> str:
    zero = {name[: -len(ZERO_SHOT)]: s for name, s in stages(zero_run).items() if name.endswith(ZERO_SHOT)}
    head = ["policy", "weights", *(c[0] for c in COLUMNS[:-1]), "recall gap " + " / ".join(map(str, GAPS)) + " ↑",
            COLUMNS[-1][0]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for policy, ref in zero.items():
        rows = [("zero-shot", ref, None)]
        trained: dict[str, list[tuple[str, dict]]] = {}
        for run in runs:
            for name, summary in stages(run).items():
                if name != policy + ZERO_SHOT and name.rpartition("_")[0] == policy and (not only or name in only):
                    trained.setdefault(name, []).append((run.name, summary))
        for name, found in trained.items():
            if pool and len(found) == 1:
                rows.append((f"{name}, one run (`{found[0][0]}`): its error over episodes", found[0][1], ref))
            elif pool:
                names = ", ".join(f"`{r}`" for r, _ in found)
                rows.append((f"{name}, n = {len(found)} ({names})", pooled(name, [s for _, s in found]), ref))
            else:
                rows += [(f"{name} (`{r}`)", summary, ref) for r, summary in found]
        if len(rows) == 1:
            continue
        for weights, summary, against in rows:
            recall = " / ".join(f"{summary[f'recall@{g}']:.2f}" for g in GAPS)
            cells = [cell(summary, key, digits, against) for _, key, digits in COLUMNS]
            lines.append("| " + " | ".join([policy, weights, *cells[:-1], recall, cells[-1]]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with trained stages")
    parser.add_argument("--zero-shot", required=True, type=Path, help="the run folder with the *_zero_shot stages")
    parser.add_argument("--pool", action="store_true",
                        help="one row per trained stage: mean ± standard error over the runs (seeds) that trained it")
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="only the trained stages of these names")
    args = parser.parse_args(argv)
    text = table(args.runs, args.zero_shot, args.pool, args.only)
    print(text)
    return text


if __name__ == "__main__":
    main()
