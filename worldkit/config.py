"""Experiment YAML in and out: parse, apply ``--set`` overrides, validate, report every problem.

``load(path, overrides)`` returns a validated ``ExperimentConfig`` or raises one ``ConfigError``
listing every issue as ``<file>: <dotted.path>: <message> (got <value>)``. ``to_yaml`` writes the
resolved config back (every default filled in), and ``save`` writes it atomically. The YAML dialect is
``yamlio``'s; the ``--set`` paths and how they are applied, ``overrides``'.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from pydantic import ValidationError

from worldkit import registry
from worldkit.errors import MISSING, ConfigError, Issue
from worldkit.overrides import Part, apply_overrides, format_path, hint, keys_at, parse_path, set_path, trim
from worldkit.schema import ExperimentConfig
from worldkit.yamlio import dump_yaml, parse_yaml, save, to_yaml

__all__ = ["load", "read", "validate", "parse_yaml", "to_yaml", "dump_yaml", "save", "parse_path", "format_path",
           "set_path", "keys_at", "apply_overrides", "Part"]


def _issue(error: dict, raw: Any, overridden: dict[tuple[Part, ...], str]) -> Issue:
    loc, node = trim(error["loc"], raw)
    path = format_path(loc)
    source = _blamed(loc, raw, overridden)
    kind = error["type"]
    if kind == "missing":
        choices = f"; {node[1]} choices: {', '.join(registry.names(node[1]))}" if node[0] == "plugin" else ""
        return Issue(path, MISSING, f"required field is missing{choices}", source)
    if kind == "extra_forbidden":
        keys = keys_at(raw, loc[:-1]) or []
        allowed = ", ".join(map(str, keys)) or "none"
        return Issue(path, error["input"], f"unknown key{hint(loc[-1], keys)}; allowed: {allowed}", source)
    message = re.sub(r"^(Value error|Assertion failed), ", "", error["msg"])  # pydantic's prefix for a validator's message
    return Issue(path, error["input"], message, source)


def _blamed(loc: tuple, raw: Any, overridden: dict[tuple[Part, ...], str]) -> Optional[str]:
    """The ``--set`` that caused a problem at ``loc``, if one did: one that set ``loc`` or a field above
    it (for a field a stage inherits, ``stages[i].train.X`` from ``train.X``, the top-level one); else one
    that changed the ``type`` of the plugin the field belongs to (its new plugin needs the field)."""
    where = loc
    if len(loc) >= 4 and loc[0] in ("stages", "compare") and loc[2] == "train":
        stage = raw.get(loc[0], [])[loc[1]] if isinstance(raw.get(loc[0]), list) and loc[1] < len(raw[loc[0]]) else {}
        if not (isinstance(stage, dict) and isinstance(stage.get("train"), dict) and loc[3] in stage["train"]):
            where = ("train", *loc[3:])  # inherited: its value is the top level's
    for path, text in overridden.items():
        if where[: len(path)] == path:
            return f"--set {text}"
    for path in getattr(overridden, "type_changed", ()):
        if loc[: len(path) - 1] == path[:-1]:
            return f"--set {overridden[path]}"
    return None


def _merge(issues: list[Issue]) -> list[Issue]:
    """One issue per path: the alternatives of a union (``int`` or ``str``) become one message."""
    merged: dict[tuple[str, Optional[str]], Issue] = {}
    for issue in issues:
        key = (issue.path, issue.source)
        first = merged.setdefault(key, issue)
        if issue.message not in first.message:
            alternative = issue.message[:1].lower() + issue.message[1:]
            merged[key] = first._replace(message=f"{first.message}, or {alternative}")
    return list(merged.values())


def validate(raw: Any, source: Optional[str] = None,
             overridden: Optional[dict[tuple[Part, ...], str]] = None) -> ExperimentConfig:
    """A validated ExperimentConfig from a raw mapping, or a ConfigError listing every issue."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([Issue("", raw, "expected a mapping of experiment fields at the top level")], source)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        issues = [_issue(e, raw, overridden or {}) for e in err.errors()]
        raise ConfigError(_merge(issues), source) from None


def read(path: Union[str, Path]) -> Any:
    """The raw YAML document at ``path``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([Issue("", MISSING, "no such file")], str(path)) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as err:
        raise ConfigError([Issue("", MISSING, f"cannot read: {err}")], str(path)) from None
    return parse_yaml(text, str(path))


def load(path: Union[str, Path], overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read the experiment YAML at ``path``, apply ``overrides`` (``a.b=VALUE``) and validate it."""
    raw = read(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([Issue("", raw, "expected a mapping of experiment fields at the top level")], str(path))
    try:
        overridden, bad = apply_overrides(raw, overrides), []
    except ConfigError as err:  # report the file's own problems too, not only the bad --set
        overridden, bad = err.applied, [i._replace(source=i.source or err.source) for i in err.issues]
    try:
        cfg = validate(raw, str(path), overridden)
    except ConfigError as err:
        if not bad:
            raise
        raise ConfigError(bad + [i._replace(source=i.source or err.source) for i in err.issues], str(path)) from None
    if bad:
        raise ConfigError(bad, "--set")
    return cfg


def load_for_eval(path: Union[str, Path], weights: str, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """The experiment at ``path`` as ``worldkit eval`` runs it: every stage and variant starts from
    ``weights`` and trains nothing (``train.max_steps=0``), whatever the file says; a grid is refused."""
    import json

    cfg = load(path, [*overrides, "train.max_steps=0", f"model.init={json.dumps(str(weights))}"])
    if cfg.grid:
        raise ConfigError([Issue("grid", MISSING, "a grid experiment; eval takes one experiment (a cell's config.yaml)")],
                          str(path))
    return cfg

