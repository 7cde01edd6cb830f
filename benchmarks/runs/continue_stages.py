"""Copy a finished run folder and reopen some of its stages with a larger train.max_steps, so that
``worldkit run --resume COPY`` trains them on from their last checkpoint (weights, EMA, optimizer and DMD
critic as they were at the old budget) and evaluates them again; the other stages stay as they were.

    python benchmarks/runs/continue_stages.py SRC DST MAX_STEPS STAGE_NAME...

(``worldkit run --resume`` alone refuses a larger budget for a finished stage, and ``model.init`` from
its ``model.pt`` would start a new optimizer and critic.) The TensorBoard logs are not copied.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from worldkit import config
from worldkit.stages import FINISHED_FILES, resolve_stages


def reopen(src: Path, dst: Path, steps: int, names: list[str]) -> list[str]:
    """Copy ``src`` to ``dst`` and mark the stages ``names`` unfinished with ``train.max_steps = steps``."""
    if dst.exists():
        raise SystemExit(f"{dst} exists")
    raw = config.load(src / "config.yaml").model_dump(mode="json")
    index = {stage["name"]: i for i, stage in enumerate(raw["stages"])}
    missing = sorted(set(names) - set(index))
    if missing:
        raise SystemExit(f"no stage {missing} in {src}; its stages: {sorted(index)}")
    for name in names:
        raw["stages"][index[name]]["train"]["max_steps"] = steps
    cfg = config.validate(raw, source=str(src / "config.yaml"))
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("tb"))
    for stage in resolve_stages(cfg):
        if stage.name in names:
            for f in FINISHED_FILES:
                (dst / "stages" / stage.dirname / f).unlink()
    config.save(cfg, dst / "config.yaml")
    return names


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 4:
        raise SystemExit(__doc__)
    names = reopen(Path(args[0]), Path(args[1]), int(args[2]), args[3:])
    print(f"{args[1]}: {', '.join(names)} reopened with train.max_steps={args[2]}")


if __name__ == "__main__":
    main()
