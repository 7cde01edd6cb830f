"""Experiment YAML in and out: parse, apply ``--set`` overrides, validate, report every problem.

``load(path, overrides)`` returns a validated ``ExperimentConfig`` or raises one ``ConfigError``
listing every issue as ``<file>: <dotted.path>: <message> (got <value>)``. ``to_yaml`` writes the
resolved config back (every default filled in), and ``save`` writes it atomically.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from worldkit import registry
from worldkit.errors import MISSING, ConfigError, Issue, PluginError
from worldkit.files import atomic_write
from worldkit.schema import ExperimentConfig, OverridesOf, PluginKind

Part = Union[str, int]
ROOT = ExperimentConfig


# --------------------------------------------------------------------------------------------------
# YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the strings ``_StrictLoader`` would read as numbers (such as '1e3')."""


# YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-4 (no dot) as a string
for _cls in (_StrictLoader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text``; a syntax error becomes a ConfigError naming line and column."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(p for p in (err.context, err.problem) if p) or "invalid YAML"
        raise ConfigError([Issue(where, MISSING, f"invalid YAML: {what}")], source) from None
    except yaml.YAMLError as err:
        raise ConfigError([Issue("", MISSING, f"invalid YAML: {err}")], source) from None


def to_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML (every default filled in, but no top-level plugin that every stage
    replaces); ``load`` of it gives the same config."""
    data = cfg.model_dump(mode="json")
    for kind in getattr(cfg, "replaced_plugins", lambda: [])():
        data.pop(kind, None)
    return dump_yaml(data)


def dump_yaml(data: Any) -> str:
    """YAML that ``parse_yaml`` reads back as the same data."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100)


def save(cfg: BaseModel, path: Union[str, Path]) -> Path:
    """Write ``to_yaml(cfg)`` to ``path`` atomically (``files.atomic_write``)."""
    return atomic_write(path, to_yaml(cfg))


# --------------------------------------------------------------------------------------------------
# Paths: "stages[1].trainer.type" <-> ("stages", 1, "trainer", "type"), and the schema along a path


_NAME = r"[A-Za-z0-9_-]+"
_PATH = re.compile(rf"{_NAME}(?:\[\d+\])*(?:\.{_NAME}(?:\[\d+\])*)*")
_TOKEN = re.compile(rf"({_NAME})|\[(\d+)\]")


def parse_path(text: str) -> list[Part]:
    """``"stages[1].train.lr"`` (or ``"stages.1.train.lr"``) -> ``["stages", 1, "train", "lr"]``."""
    if not _PATH.fullmatch(text):
        raise ValueError(f"malformed path {text!r}; expected e.g. model.width or stages[1].trainer.type")
    return [int(i) if i else int(n) if n.isdigit() else n for n, i in _TOKEN.findall(text)]


def format_path(parts: Iterable[Part]) -> str:
    """``["stages", 1, "trainer"]`` -> ``"stages[1].trainer"``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# A schema node: ("model", cls) | ("plugin", kind) | ("list", node) | ("leaf", None)
Node = tuple[str, Any]


def _classify(annotation: Any, metadata: Sequence[Any] = ()) -> Node:
    for m in metadata:
        if isinstance(m, PluginKind):
            return ("plugin", m.kind)
        if isinstance(m, OverridesOf):
            return ("model", m.model)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is not None and hasattr(annotation, "__metadata__"):  # Annotated[...]
        return _classify(args[0], annotation.__metadata__)
    if origin is Union:
        inner = [a for a in args if a is not type(None)]
        return _classify(inner[0]) if len(inner) == 1 else ("leaf", None)
    if origin is list:
        return ("list", _classify(args[0]) if args else ("leaf", None))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", annotation)
    return ("leaf", None)


def _plugin_config(kind: str, data: Any) -> Optional[type[BaseModel]]:
    """The Config class of the plugin named in ``data["type"]``, or None when it cannot be found."""
    if isinstance(data, dict) and isinstance(data.get("type"), str):
        try:
            return registry.get(kind, data["type"]).Config
        except PluginError:
            return None
    return None


def _keys(node: Node, data: Any) -> Optional[list[Part]]:
    """The keys allowed under ``node`` (``data`` is the raw value there); None when it cannot be known."""
    tag, what = node
    if tag == "model":
        return list(what.model_fields)
    if tag == "plugin":
        config = _plugin_config(what, data)
        return None if config is None else ["type", *config.model_fields]
    if tag == "list":
        return list(range(len(data))) if isinstance(data, list) else []
    return []


def _child(node: Node, part: Part, data: Any) -> Node:
    tag, what = node
    if tag == "model":
        field = what.model_fields[part]
        return _classify(field.annotation, field.metadata)
    if tag == "plugin":
        config = _plugin_config(what, data)
        if part == "type" or config is None or part not in config.model_fields:
            return ("leaf", None)
        field = config.model_fields[part]
        return _classify(field.annotation, field.metadata)
    if tag == "list":
        return what
    return ("leaf", None)


def _step(data: Any, part: Part) -> Any:
    if isinstance(data, dict):
        return data.get(part, MISSING)
    if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
        return data[part]
    return MISSING


def _walk(loc: Sequence[Part], raw: Any) -> tuple[int, Node, Any]:
    """Follow ``loc`` through the schema and the raw data as far as the schema knows it.

    Returns how many parts were followed, and the node and raw data reached. It stops at a leaf (a
    plain value), at a key the schema does not have, or where the schema cannot be known (a plugin
    whose ``type`` is not found).
    """
    node: Node = ("model", ROOT)
    data = raw
    for i, part in enumerate(loc):
        keys = _keys(node, data)
        if node[0] == "leaf" or keys is None or part not in keys:
            return i, node, data
        node, data = _child(node, part, data), _step(data, part)
    return len(loc), node, data


def _trim(loc: Sequence[Part], raw: Any) -> tuple[tuple[Part, ...], Node]:
    """``loc`` cut after its first leaf (pydantic appends union member tags such as ``"str"``)."""
    n, node, _ = _walk(loc, raw)
    return (tuple(loc[:n]), node) if node[0] == "leaf" else (tuple(loc), node)


def keys_at(raw: Any, parts: Sequence[Part]) -> Optional[list[Part]]:
    """The keys the schema allows under ``parts`` given the raw config ``raw`` (None: unknown)."""
    n, node, data = _walk(parts, raw)
    return _keys(node, data) if n == len(parts) else None


# --------------------------------------------------------------------------------------------------
# --set overrides


def _hint(name: Part, keys: Sequence[Part]) -> str:
    close = difflib.get_close_matches(str(name), [str(k) for k in keys], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _default_section(node: Node, part: Part) -> dict:
    """A fresh raw section for a missing key: a plugin field starts from its default ``{type: ...}``."""
    if node[0] == "model":
        default = node[1].model_fields[part].get_default(call_default_factory=True)
        if isinstance(default, dict):
            return copy.deepcopy(default)
    return {}


def _drop_unknown_keys(kind: str, section: dict, name: Any) -> None:
    """A plugin field switched to another plugin keeps only the settings the new one has (so
    ``--set memory.type=sink`` does not fail on the old plugin's keys); an unknown name keeps them all
    for validation to report."""
    try:
        fields = registry.get(kind, name).Config.model_fields
    except (PluginError, TypeError):
        return
    for key in [k for k in section if k != "type" and k not in fields]:
        del section[key]


def set_path(raw: dict, parts: Sequence[Part], value: Any) -> bool:
    """Set ``raw[parts...] = value``, creating missing sections; raises ValueError for a bad path.
    Returns whether it changed a plugin's ``type``."""
    node: Node = ("model", ROOT)
    data: Any = raw
    for i, part in enumerate(parts):
        here = format_path(parts[:i]) or "the top level"
        keys = _keys(node, data)
        if node[0] == "leaf":
            raise ValueError(f"{here} is a value, not a section")
        if node[0] == "list":
            if not isinstance(part, int) or not 0 <= part < len(data):
                raise ValueError(f"no item {part!r} in {here}, which has {len(data)} items")
        elif keys is not None and part not in keys:
            available = ", ".join(map(str, keys)) or "none"
            raise ValueError(f"no key {part!r} in {here}{_hint(part, keys)}; keys available there: {available}")
        if i == len(parts) - 1:
            retyped = node[0] == "plugin" and part == "type" and isinstance(data, dict) and data.get("type") != value
            if retyped:
                _drop_unknown_keys(node[1], data, value)
            data[part] = value
            return retyped
        child = _child(node, part, data)
        nxt = _step(data, part)
        if nxt is MISSING or nxt is None:
            if child[0] == "list":
                where = format_path(parts[:i + 1])
                raise ValueError(f"{where} is not given, so it has no items to index; set it whole: {where}=[...]")
            nxt = data[part] = _default_section(node, part)
        elif not isinstance(nxt, list if child[0] == "list" else dict):
            shape = "list" if child[0] == "list" else "section"
            raise ValueError(f"{format_path(parts[:i + 1])} is {nxt!r}, not a {shape}")
        node, data = child, nxt


class Overrides(dict):
    """Overridden paths -> the ``--set`` text, and which of them changed a plugin's ``type``."""

    def __init__(self):
        super().__init__()
        self.type_changed: set[tuple[Part, ...]] = set()


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict[tuple[Part, ...], str]:
    """Apply ``a.b.c=VALUE`` overrides (VALUE parsed as YAML) to ``raw`` in order.

    Returns which paths were overridden, by which override text, so that a validation issue there can
    be blamed on ``--set`` rather than the file. Every bad override is reported at once.
    """
    issues: list[Issue] = []
    applied = Overrides()
    for text in overrides:
        key, sep, value_text = text.partition("=")
        try:
            if not sep:
                raise ValueError("expected KEY=VALUE, e.g. model.width=256")
            parts = parse_path(key.strip())
        except ValueError as err:
            issues.append(Issue(key, MISSING, str(err)))
            continue
        try:
            value = parse_yaml(value_text, "--set")
        except ConfigError as err:
            issues += [Issue(key, value_text, i.message) for i in err.issues]
            continue
        trial = copy.deepcopy(raw)  # a failing path leaves raw as it was (no half-made sections)
        try:
            retyped = set_path(trial, parts, value)
        except ValueError as err:
            issues.append(Issue(format_path(parts), MISSING, str(err)))
            continue
        if retyped:
            applied.type_changed.add(tuple(parts))
        raw.clear()
        raw.update(trial)
        applied[tuple(parts)] = text
    if issues:
        err = ConfigError(issues, "--set")
        err.applied = applied  # the good ones are applied: the file can still be checked under them
        raise err
    return applied


# --------------------------------------------------------------------------------------------------
# Validation


def _issue(error: dict, raw: Any, overridden: dict[tuple[Part, ...], str]) -> Issue:
    loc, node = _trim(error["loc"], raw)
    path = format_path(loc)
    source = _blamed(loc, raw, overridden)
    kind = error["type"]
    if kind == "missing":
        choices = f"; {node[1]} choices: {', '.join(registry.names(node[1]))}" if node[0] == "plugin" else ""
        return Issue(path, MISSING, f"required field is missing{choices}", source)
    if kind == "extra_forbidden":
        keys = keys_at(raw, loc[:-1]) or []
        allowed = ", ".join(map(str, keys)) or "none"
        return Issue(path, error["input"], f"unknown key{_hint(loc[-1], keys)}; allowed: {allowed}", source)
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
