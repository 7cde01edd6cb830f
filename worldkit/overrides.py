"""``--set`` overrides: dotted paths (``stages[1].trainer.type`` <-> ``("stages", 1, "trainer", "type")``),
the experiment schema followed along a path (sections, lists, plugin fields by the plugin's own Config),
and ``apply_overrides``, which sets each path in the raw YAML, naming the keys a bad path could have used."""
from __future__ import annotations

import copy
import difflib
import re
from typing import Any, Iterable, Optional, Sequence, Union, get_args, get_origin

from pydantic import BaseModel

from worldkit import registry
from worldkit.errors import MISSING, ConfigError, Issue, PluginError
from worldkit.schema import ExperimentConfig, OverridesOf, PluginKind
from worldkit.yamlio import parse_yaml

Part = Union[str, int]
ROOT = ExperimentConfig


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


def trim(loc: Sequence[Part], raw: Any) -> tuple[tuple[Part, ...], Node]:
    """``loc`` cut after its first leaf (pydantic appends union member tags such as ``"str"``)."""
    n, node, _ = _walk(loc, raw)
    return (tuple(loc[:n]), node) if node[0] == "leaf" else (tuple(loc), node)


def keys_at(raw: Any, parts: Sequence[Part]) -> Optional[list[Part]]:
    """The keys the schema allows under ``parts`` given the raw config ``raw`` (None: unknown)."""
    n, node, data = _walk(parts, raw)
    return _keys(node, data) if n == len(parts) else None


# --------------------------------------------------------------------------------------------------
# --set overrides


def hint(name: Part, keys: Sequence[Part]) -> str:
    """`` (did you mean 'X'?)`` for the key of ``keys`` closest to ``name``, or ``""``."""
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
            raise ValueError(f"no key {part!r} in {here}{hint(part, keys)}; keys available there: {available}")
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
