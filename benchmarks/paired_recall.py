"""Recall by gap of stages trained in different runs, each paired episode by episode with a reference
stage: Sparse Forcing against the same-KV window when each trained in a run of its own.

    python benchmarks/paired_recall.py RUN/STAGE [RUN/STAGE ...] --reference RUN/STAGE

STAGE is a stage's name (its folder without the index). The evaluation is seeded, so the runs of one
benchmark score the same test episodes; stages scored on different episodes (another episode count,
context, horizon or set of returns) are refused, since pairing them would compare unrelated forecasts.
The table is the one a run writes for its own stages (``*``: a paired difference beyond two standard
errors).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from worldkit import recall_report
from worldkit.stages import parse_dirname

SAME = ("episodes", "seeds", "context_frames", "horizons")


def load(spec: str) -> tuple[str, str, dict]:
    """``RUN/STAGE`` -> (its label, its memory policy, its eval.json)."""
    run, _, name = spec.rstrip("/").rpartition("/")
    found = [p.parent for p in Path(run).glob("stages/*/eval.json") if parse_dirname(p.parent.name)[1] == name]
    if not run or len(found) != 1:
        raise SystemExit(f"{spec}: expected RUN/STAGE naming one evaluated stage folder "
                         f"(found {len(found)} under {run or '?'}/stages)")
    ev = json.loads((found[0] / "eval.json").read_text())
    memory = json.loads((found[0] / "summary.json").read_text())["memory"]
    if not ev.get("recall"):
        raise SystemExit(f"{spec}: its evaluation has no recall (an env without recall targets)")
    return f"{Path(run).name}/{name}", memory, ev


def table(specs: list[str], reference: str) -> str:
    rows = [load(s) for s in dict.fromkeys([reference, *specs])]
    first = rows[0][2]
    for label, _, ev in rows[1:]:
        differ = [k for k in SAME if ev.get(k) != first.get(k)]
        differ += [k for k in ("gaps", "returns") if ev["recall"][k] != first["recall"][k]]
        if differ:
            raise SystemExit(f"{label} was scored on other episodes than {rows[0][0]} ({', '.join(differ)} differ)")
    return recall_report.markdown([(label, memory, ev["recall"]) for label, memory, ev in rows], rows[0][0])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stages", nargs="+", metavar="RUN/STAGE")
    p.add_argument("--reference", required=True, metavar="RUN/STAGE", help="the row every other is paired with")
    args = p.parse_args(argv)
    print(table(args.stages, args.reference))


if __name__ == "__main__":
    main()
