"""YAML as worldkit reads and writes it: a duplicate key is an error, ``1e-4`` is a float (YAML 1.2), a
syntax error names its line and column; what ``dump_yaml`` writes ``parse_yaml`` reads back unchanged."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

import yaml
from pydantic import BaseModel

from worldkit.errors import MISSING, ConfigError, Issue
from worldkit.files import atomic_write


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
