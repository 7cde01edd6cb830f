"""Grid experiments: one experiment YAML, many cells, each cell a plain experiment in its own run folder.

An experiment with ``grid:`` (dotted config path -> list of values) has one cell per combination of
values, minus every cell that matches a partial assignment in ``exclude:``. A cell is the experiment with
its values set exactly as ``--set PATH=VALUE`` would set them (shallow paths first, so ``memory.window_frames``
refines a ``memory`` axis); every cell is validated before anything runs.

A grid folder holds::

    config.yaml             the grid as given (``--set`` applied, ``grid:`` kept); ``run --resume`` reads it
    tb/                     the HParams declaration (which hparams and metrics the table compares)
    cells/<name>/           a run folder (worldkit.experiment) plus cell.json, and done.json once its
                            results are written, or error.txt when it failed
    results.csv, results.md, psnr_vs_horizon.png, cost_vs_horizon.png   (worldkit.report)

``grid_run.run`` runs the cells (one after another in this process, shared leading stages trained once).
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from worldkit import config
from worldkit.cells import axis_labels, format_value
from worldkit.errors import MISSING, ConfigError, Issue
from worldkit.files import atomic_write
from worldkit.schema import ExperimentConfig

Parts = tuple[Union[str, int], ...]
MAX_NAME = 120


@dataclass(frozen=True)
class Cell:
    """One combination of grid values: its position, folder name, values and validated config."""

    index: int
    name: str
    assignment: dict[str, Any]  # normalized dotted path -> value, in the grid's axis order
    config: ExperimentConfig


@dataclass(frozen=True)
class Grid:
    """A grid experiment: the raw document (``--set`` applied) it came from and its validated cells."""

    raw: dict
    source: str
    cells: list[Cell]


# --------------------------------------------------------------------------------------------------
# Expansion: pure functions over {path: values}


def _parts(path: str) -> Parts:
    return tuple(config.parse_path(path))


def normalize(path: str) -> str:
    """``"stages.1.train.lr"`` -> ``"stages[1].train.lr"``: one spelling per path."""
    return config.format_path(_parts(path))


def _covering_axis(axes: Sequence[str], parts: Parts) -> Optional[str]:
    """The axis that sets the value at ``parts``: the longest axis path that is a prefix of it."""
    best = None
    for axis in axes:
        a = _parts(axis)
        if parts[: len(a)] == a and (best is None or len(a) > len(_parts(best))):
            best = axis
    return best


def _descend(value: Any, parts: Parts) -> Any:
    for p in parts:
        if isinstance(value, dict) and p in value:
            value = value[p]
        elif isinstance(value, list) and isinstance(p, int) and 0 <= p < len(value):
            value = value[p]
        else:
            return MISSING
    return value


def lookup(assignment: dict[str, Any], path: str) -> Any:
    """The value a cell's assignment gives ``path`` (an axis, or a key inside an axis's value), or MISSING."""
    parts = _parts(path)
    axis = _covering_axis(list(assignment), parts)
    if axis is None:
        return MISSING
    return _descend(assignment[axis], parts[len(_parts(axis)):])


def matches(assignment: dict[str, Any], partial: dict[str, Any]) -> bool:
    """Whether the cell ``assignment`` has every value of the partial assignment ``partial``."""
    return all(_equal(lookup(assignment, path), value) for path, value in partial.items())


def _equal(a: Any, b: Any) -> bool:
    """YAML values equal; a boolean equals only a boolean (in Python ``True == 1``)."""
    if a is MISSING or b is MISSING or isinstance(a, bool) != isinstance(b, bool):
        return False
    return a == b


def assignments(grid: dict[str, list], exclude: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """The grid's cells as assignments {axis: value}: the product of the value lists in the order given
    (the first axis varies slowest), minus every cell that matches an entry of ``exclude``."""
    axes = {normalize(k): v for k, v in grid.items()}
    out = []
    for combo in itertools.product(*axes.values()):
        cell = dict(zip(axes, combo))
        if not any(matches(cell, partial) for partial in exclude):
            out.append(cell)
    return out


def check(grid: dict[str, list], exclude: Sequence[dict[str, Any]] = ()) -> list[Issue]:
    """Every problem with a grid and its exclusions, each at the ``grid.PATH`` / ``exclude[i].PATH`` to fix."""
    issues: list[Issue] = []
    axes: dict[str, list] = {}
    for key, values in grid.items():
        try:
            path = normalize(key)
        except ValueError as err:
            issues.append(Issue(f"grid.{key}", MISSING, str(err)))
            continue
        if path in axes:
            issues.append(Issue(f"grid.{key}", MISSING, f"the same path as another axis ({path})"))
            continue
        if _parts(key)[0] in ("grid", "exclude"):
            issues.append(Issue(f"grid.{key}", MISSING, "a grid axis cannot set the grid itself"))
            continue
        repeated = [v for i, v in enumerate(values) if any(_equal(v, w) for w in values[:i])]
        if repeated:
            issues.append(Issue(f"grid.{key}", repeated[0], "value listed twice; each value makes one cell"))
        axes[path] = values
    if exclude and not grid:
        issues.append(Issue("exclude", exclude, "exclude needs a grid to exclude cells from"))
    for i, partial in enumerate(exclude):
        for key, value in partial.items():
            where = f"exclude[{i}].{key}"
            try:
                parts = _parts(key)
            except ValueError as err:
                issues.append(Issue(where, MISSING, str(err)))
                continue
            axis = _covering_axis(list(axes), parts)
            if axis is None:
                issues.append(Issue(where, value, f"not on a grid axis; axes: {', '.join(axes) or 'none'}"))
                continue
            taken = [_descend(v, parts[len(_parts(axis)):]) for v in axes[axis]]
            taken = [t for t in taken if t is not MISSING]
            if not any(_equal(t, value) for t in taken):
                shown = ", ".join(map(repr, taken)) or "nothing (the axis values have no such key)"
                issues.append(Issue(where, value,
                                    f"no cell has this value; {config.format_path(parts)} takes: {shown}"))
    return issues


# --------------------------------------------------------------------------------------------------
# Names


_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+~@-]")


def cell_names(cells: Sequence[dict[str, Any]]) -> list[str]:
    """Readable, filesystem-safe, unique folder names: ``memory=sink,selector=all``."""
    labels = axis_labels(list(cells[0])) if cells else {}
    names: list[str] = []
    for cell in cells:
        name = _UNSAFE.sub("_", ",".join(f"{labels[a]}={format_value(v)}" for a, v in cell.items()))
        if name.startswith((".", "-")) or not name:
            name = f"cell{name}"
        if len(name) > MAX_NAME:  # keep a readable head and make the rest a hash
            name = f"{name[:MAX_NAME - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
        base, k = name, 2
        while name in names:  # two values that print the same
            name, k = f"{base}~{k}", k + 1
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------------
# Validated cells


def _single_process(cfg: ExperimentConfig) -> list[Issue]:
    trains = [("train", cfg.train)]
    trains += [(f"stages[{i}].train", cfg.stage_config(s).train) for i, s in enumerate(cfg.stages)]
    out = []
    for where, t in trains:
        if t.strategy != "auto" or str(t.devices) != "1" or t.num_nodes != 1:
            out.append(Issue(where, {"strategy": t.strategy, "devices": t.devices, "num_nodes": t.num_nodes},
                             "grid cells run one process each; multi-device cells are not supported yet "
                             "(use strategy: auto, devices: 1, num_nodes: 1)"))
    return out


def expand(raw: dict, source: str) -> list[Cell]:
    """Every cell of the grid experiment ``raw``, validated; one ConfigError lists every problem.

    The experiment without its grid must itself be valid (it is the base every cell starts from); a
    cell's problems are reported as ``<file> cell <name>: <field>: <message>``."""
    base_raw = {k: v for k, v in raw.items() if k not in ("grid", "exclude")}
    config.validate(copy.deepcopy(raw), source)  # the base's own problems, reported once (plugin checks: per cell)
    grid, exclude = raw.get("grid") or {}, raw.get("exclude") or []
    issues = check(grid, exclude)
    if issues:
        raise ConfigError(issues, source)
    found = assignments(grid, exclude)
    if not found:
        raise ConfigError([Issue("exclude", MISSING, "every cell of the grid is excluded")], source)
    cells, issues = [], []
    for i, (name, cell) in enumerate(zip(cell_names(found), found)):
        where = f"{source} cell {name}"
        cell_raw = copy.deepcopy(base_raw)
        for axis in sorted(cell, key=lambda a: len(_parts(a))):  # shallow first: deeper axes refine
            try:
                config.set_path(cell_raw, list(_parts(axis)), copy.deepcopy(cell[axis]))
            except ValueError as err:
                issues.append(Issue(f"grid.{axis}", cell[axis], str(err), where))
        try:
            cfg = config.validate(cell_raw, where)
        except ConfigError as err:
            issues += [i._replace(source=i.source or where) for i in err.issues]
            continue
        issues += [i._replace(source=where) for i in _single_process(cfg)]
        cells.append(Cell(i, name, cell, cfg))
    if issues:
        raise ConfigError(issues, source)
    return cells


def load(path: Union[str, Path], overrides: Sequence[str] = ()) -> Grid:
    """The grid experiment at ``path`` with ``overrides`` applied, every cell validated."""
    raw = config.read(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError([Issue("", raw, "expected a mapping of experiment fields at the top level")], str(path))
    config.apply_overrides(raw, overrides)
    return Grid(raw, str(path), expand(raw, str(path)))


def save_config(grid: Grid, grid_dir: Path) -> Path:
    """The grid as given (``--set`` applied) to ``grid_dir/config.yaml``, atomically."""
    head = "# A grid experiment; each cell's resolved config is cells/<name>/config.yaml\n"
    text = head + config.dump_yaml(grid.raw)
    return atomic_write(Path(grid_dir) / "config.yaml", text)
