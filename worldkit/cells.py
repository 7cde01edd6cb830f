"""A grid folder's cells: their files, and the words for their axes and values.

``grid.py`` writes a grid folder and ``report.py`` reads it; both take the layout and the labels from
here. A cell folder is ``<grid>/cells/<name>/`` with ``cell.json`` (index, name, assignment), and
``done.json`` once its results are written or ``error.txt`` when it failed.
"""
from __future__ import annotations

from typing import Any, Sequence

from worldkit import config

CELLS = "cells"
DONE = "done.json"  # written atomically after the cell's results: the cell is finished
ERROR = "error.txt"  # the traceback of a failed cell
CELL = "cell.json"  # the cell's index, name and assignment


def _label(path: str, n: int) -> str:
    """The last ``n`` names of ``path`` (an index stays with its name: ``stages.1``)."""
    units: list[str] = []
    for p in config.parse_path(path):
        if isinstance(p, int) and units:
            units[-1] += f".{p}"
        else:
            units.append(str(p))
    if len(units) > 1 and units[-1] == "type":  # memory.type -> memory
        units = units[:-1]
    return ".".join(units[-n:])


def axis_labels(axes: Sequence[str]) -> dict[str, str]:
    """A short unique label per axis: the last path part (``type`` dropped), longer where two collide."""
    depth = {a: 1 for a in axes}
    while True:
        labels = {a: _label(a, depth[a]) for a in axes}
        clash = [a for a in axes if list(labels.values()).count(labels[a]) > 1 and _label(a, depth[a] + 1) != labels[a]]
        if not clash:
            return labels
        for a in clash:
            depth[a] += 1


def format_value(value: Any) -> str:
    """A value as it appears in a cell name: ``sink``, ``0.25``, ``local_window+top_k=0.25``, ``1+4``."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    if isinstance(value, dict):
        head = [format_value(value["type"])] if "type" in value else []
        return "+".join(head + [f"{k}={format_value(v)}" for k, v in value.items() if k != "type"])
    if isinstance(value, list):
        return "+".join(format_value(v) for v in value)
    return str(value)
