"""Running a grid (``grid.Grid``): its cells one after another in this process, each a plain experiment
in ``cells/<name>/``, then the grid's results (``report.build``).

Leading stages that cells share (e.g. a dense pretraining stage before each cell's own fine-tuning) are
trained once: a cell starts from a copy of another cell's finished stage when everything that stage
depends on is the same (``stage_keys``). A started cell keeps the config it started with; ``run`` again
resumes the unfinished cells and leaves the finished ones. Not done yet: running cells in parallel or
spreading them over the available devices (a ``--parallel`` option), and multi-device cells (DDP), which
are refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Optional, Union

from worldkit import config, report, signals, tensorboard_log
from worldkit.cells import CELL, CELLS, DONE, ERROR
from worldkit.files import atomic_write
from worldkit.grid import Cell, Grid
from worldkit.schema import ExperimentConfig
from worldkit.stages import final_stage, resolve_stages, stage_finished

def stage_keys(cfg: ExperimentConfig) -> list[str]:
    """One key per leading stage (comparison variants excluded), equal for two configs exactly when that
    stage's weights and evaluation would be the same: env, data, model (its init too), seed, evaluation,
    and the stage's and every earlier stage's name, plugins and training settings."""
    common = cfg.model_dump(mode="json", include={"seed", "env", "data", "model", "eval"})
    keys, chain = [], []
    for st in resolve_stages(cfg):
        if getattr(st, "variant", False):
            break
        chain.append([st.dirname, st.trainer, st.memory, st.selector, st.attention, st.train.model_dump(mode="json")])
        keys.append(hashlib.sha1(json.dumps([common, chain], sort_keys=True).encode()).hexdigest())
    return keys


def _finished_stage(folder: Path, name: str) -> Optional[Path]:
    d = folder / "stages" / name
    return d if stage_finished(d) else None


def _copy_dir(src: Path, dst: Path) -> None:
    """Copy a folder (its Lightning checkpoints left out) through a temporary name, so it appears whole."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoints"))
    os.replace(tmp, dst)


def reuse_stages(cfg: ExperimentConfig, grid_dir: Path, folder: Path) -> list[str]:
    """Copy into a new cell's ``folder`` the finished leading stages it shares with another cell of the
    grid folder, as that cell's saved config ran them (never its last stage, nor a stage that is another
    cell's last: a cell's result and hparams are its own run); returns the names of the stages copied."""
    def shareable(c: ExperimentConfig) -> list[tuple[str, str]]:  # (stage folder, key) before the result stage
        return list(zip((s.dirname for s in resolve_stages(c)), stage_keys(c)))[: final_stage(c).index]

    others = [(d, shareable(config.load(d / "config.yaml"))) for d in sorted((Path(grid_dir) / CELLS).iterdir())
              if d != folder and (d / "config.yaml").exists()]
    copied = []
    for i, (name, key) in enumerate(shareable(cfg)):
        source = next((d for d, stages in others
                       if stages[i:i + 1] == [(name, key)] and _finished_stage(d, name)), None)
        if source is None:
            break
        if (source / "tb" / name).is_dir():
            _copy_dir(source / "tb" / name, folder / "tb" / name)
        _copy_dir(source / "stages" / name, folder / "stages" / name)  # last: a finished stage is a whole one
        print(f"   stage {name}: the same as in cell {source.name}, copied", flush=True)
        copied.append(name)
    return copied


def cell_dir(grid_dir: Path, cell: Cell) -> Path:
    return Path(grid_dir) / CELLS / cell.name


def _prepare(cell: Cell, folder: Path) -> ExperimentConfig:
    """The cell's folder with cell.json and config.yaml; a started cell keeps the config it started with."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"index": cell.index, "name": cell.name, "assignment": cell.assignment}
    atomic_write(folder / CELL, json.dumps(meta))
    saved = folder / "config.yaml"
    if saved.exists():
        return config.load(saved)
    config.save(cell.config, saved)
    return cell.config


def run(grid: Grid, grid_dir: Union[str, Path], runner: Optional[Callable[..., Any]] = None) -> list[report.CellResult]:
    """Run every unfinished cell of ``grid`` in ``grid_dir``, one after another; returns every cell's result.

    A finished cell (``done.json``) is skipped; a cell that raises is recorded in its ``error.txt`` and the
    grid goes on (it is tried again on the next run). Ctrl-C stops the grid and keeps every finished cell.
    The summary (worldkit.report) is rebuilt after each cell. ``runner`` defaults to ``experiment.run``."""
    grid_dir = Path(grid_dir)
    runner = runner or import_module("worldkit.experiment").run
    tensorboard_log.declare_hparams(grid_dir / "tb", [c.config for c in grid.cells])
    for cell in grid.cells:
        folder = cell_dir(grid_dir, cell)
        if (folder / DONE).exists():
            print(f"== cell {cell.index + 1}/{len(grid.cells)} {cell.name}: finished, skipped", flush=True)
            continue
        started = (folder / "stages").exists()
        cfg = _prepare(cell, folder)
        (folder / ERROR).unlink(missing_ok=True)
        print(f"== cell {cell.index + 1}/{len(grid.cells)} {cell.name}", flush=True)
        if not started:
            started = bool(reuse_stages(cfg, grid_dir, folder))
        t0 = time.perf_counter()
        try:
            runner(cfg, folder, resume=started)
        except KeyboardInterrupt:
            raise signals.interrupt(
                f"stopped in cell {cell.name}; finished cells are kept; resume with: worldkit run --resume {grid_dir}"
            ) from None
        except Exception as err:  # a failing cell is recorded; the grid goes on
            atomic_write(folder / ERROR, traceback.format_exc())
            print(f"!! cell {cell.name} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        else:
            done = {"name": cell.name, "wall_s": round(time.perf_counter() - t0, 1),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write(folder / DONE, json.dumps(done))
        report.build(grid_dir)
    return report.collect(grid_dir)
