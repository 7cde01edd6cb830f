"""The plugin registry: one entry-point group per kind, read lazily, loud about every problem.

A plugin of kind ``K`` named ``N`` is an entry point ``N = "module:Class"`` in the group
``worldkit.K`` of any installed distribution; worldkit's own built-ins are registered the same way
(see pyproject.toml). Entry points are read the first time a kind is looked up, and a plugin's module
is imported only when that plugin is asked for. ``register`` adds a class by hand (for tests and
notebooks); it is not how plugins ship.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterator, Optional

from worldkit.errors import (
    BrokenPluginError,
    DuplicatePluginError,
    PluginError,
    PluginTypeError,
    UnknownPluginError,
    WorldkitError,
)
from worldkit.interfaces import KINDS, Plugin, PluginConfig

GROUP_PREFIX = "worldkit."
REGISTERED = "<registered>"  # the "distribution" of a class added with ``register``


@dataclass(frozen=True)
class Entry:
    """One plugin as ``worldkit plugins`` shows it: where it comes from and what it is, or why it is broken."""

    kind: str
    name: str
    dist: str
    version: str
    target: str  # "module:attr" of the entry point, or the class's qualified name
    description: str = ""
    error: Optional[str] = None  # set when the plugin cannot be used

    @property
    def origin(self) -> str:
        return f"{self.dist} {self.version}".strip()

    @property
    def ok(self) -> bool:
        return self.error is None


def _origin(ep: EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", ""
    return dist.metadata["Name"] or dist.name, dist.version


def describe(cls: type) -> str:
    """First line of the class's own docstring (an inherited one would describe the interface)."""
    doc = cls.__dict__.get("__doc__") or ""
    lines = doc.strip().splitlines()
    return lines[0].strip() if lines else ""


class Registry:
    """Finds plugin classes by (kind, name) in the ``worldkit.<kind>`` entry-point groups."""

    def __init__(self, kinds: dict[str, type[Plugin]] = KINDS, group_prefix: str = GROUP_PREFIX):
        self.kinds = kinds
        self.group_prefix = group_prefix
        self._points: dict[str, dict[str, list[EntryPoint]]] = {}  # kind -> name -> entry points
        self._loaded: dict[tuple[str, str], type[Plugin]] = {}
        self._failed: dict[tuple[str, str], PluginError] = {}
        self._registered: dict[str, dict[str, type[Plugin]]] = {kind: {} for kind in kinds}
        self._twins: set[tuple[str, str]] = set()  # (distribution kept, distribution naming the same targets)

    # -- reading ----------------------------------------------------------------------------------

    def _check_kind(self, kind: str) -> None:
        if kind not in self.kinds:
            raise WorldkitError(f"unknown plugin kind {kind!r}; kinds: {', '.join(self.kinds)}")

    def _entry_points(self, kind: str) -> dict[str, list[EntryPoint]]:
        """Entry points of ``kind`` by name, read once and cached (``clear_cache`` rereads)."""
        self._check_kind(kind)
        if kind not in self._points:
            by_name: dict[str, list[EntryPoint]] = {}
            for ep in entry_points(group=self.group_prefix + kind):
                same = by_name.setdefault(ep.name, [])
                # Two distributions naming the very same target (a package installed again under a new
                # distribution name, the old metadata left behind) are one plugin, not a clash.
                twin = next((other for other in same if other.value == ep.value), None)
                if twin is None:
                    same.append(ep)
                elif _origin(twin) != _origin(ep):
                    self._twins.add((" ".join(_origin(twin)).strip(), " ".join(_origin(ep)).strip()))
            self._points[kind] = by_name
        return self._points[kind]

    def names(self, kind: str) -> list[str]:
        """Every name of ``kind``, sorted, without importing any plugin."""
        return sorted(set(self._entry_points(kind)) | set(self._registered[kind]))

    def get(self, kind: str, name: str) -> type[Plugin]:
        """The plugin class ``kind``/``name``, importing its module on first use."""
        points = self._entry_points(kind)
        if name in self._registered[kind]:
            return self._registered[kind][name]
        if name not in points:
            choices = self.names(kind)
            close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
            raise UnknownPluginError(kind, str(name), choices, close[0] if close else None)
        key = (kind, name)
        if key in self._loaded:
            return self._loaded[key]
        if key in self._failed:
            raise self._failed[key]
        try:
            cls = self._load(kind, name, points[name])
        except PluginError as err:
            self._failed[key] = err
            raise
        self._loaded[key] = cls
        return cls

    def _load(self, kind: str, name: str, eps: list[EntryPoint]) -> type[Plugin]:
        if len(eps) > 1:
            raise DuplicatePluginError(kind, name, [" ".join(_origin(ep)) + f" ({ep.value})" for ep in eps])
        ep = eps[0]
        origin = " ".join(_origin(ep)).strip()
        try:
            obj = ep.load()
        except Exception as exc:  # any failure inside a plugin's import is that plugin's problem
            raise BrokenPluginError(kind, name, origin, f"{type(exc).__name__}: {exc}") from exc
        self._check_class(kind, name, obj, origin)
        return obj

    def _check_class(self, kind: str, name: str, obj: Any, origin: str) -> None:
        base = self.kinds[kind]
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginTypeError(
                kind, name, origin, f"{obj!r} is not a subclass of {base.__module__}.{base.__qualname__}"
            )

    def build(self, kind: str, spec: Any, cfg: Optional[dict] = None) -> Plugin:
        """A fresh instance of a ``kind`` plugin: the one way worldkit builds a plugin.

        ``spec`` is the plugin as an experiment YAML writes it, ``{type: NAME, **fields}``; or a validated
        ``schema.PluginSpec`` (its Config is used as is); or just ``NAME``, with the fields in ``cfg``.
        The fields are validated by the plugin's own ``Config``.
        """
        if cfg is not None and not isinstance(spec, str):
            raise WorldkitError(f"{kind}: cfg goes with a plugin name, not with {type(spec).__name__} {spec!r}")
        config = getattr(spec, "config", None)
        if isinstance(config, PluginConfig):  # a schema.PluginSpec (not imported: schema imports this module)
            if spec.kind != kind:
                raise WorldkitError(f"expected a {kind} plugin, got a {spec.kind} plugin {spec.type!r}")
            return self.get(kind, spec.type)(config)
        if isinstance(spec, Mapping):
            if "type" not in spec:
                raise WorldkitError(f"a {kind} plugin is written {{type: NAME, ...}}; got {dict(spec)!r}")
            cfg, spec = {k: v for k, v in spec.items() if k != "type"}, spec["type"]
        cls = self.get(kind, spec)
        return cls(cls.Config.model_validate(cfg or {}))

    def entries(self, kind: Optional[str] = None) -> list[Entry]:
        """Every plugin of ``kind`` (or of all kinds), importing each to describe it; broken ones included."""
        kinds = [kind] if kind is not None else list(self.kinds)
        out: list[Entry] = []
        for k in kinds:
            points = self._entry_points(k)
            for name in self.names(k):
                if name in self._registered[k]:
                    cls = self._registered[k][name]
                    out.append(Entry(k, name, REGISTERED, "", cls.__qualname__, describe(cls)))
                    continue
                for ep in points[name]:
                    dist, version = _origin(ep)
                    try:
                        cls = self.get(k, name)
                        out.append(Entry(k, name, dist, version, ep.value, describe(cls)))
                    except PluginError as err:
                        out.append(Entry(k, name, dist, version, ep.value, error=err.reason or str(err)))
        return out

    # -- writing (tests, notebooks) ---------------------------------------------------------------

    @contextmanager
    def register(self, kind: str, name: str, cls: type[Plugin], replace: bool = False) -> Iterator[type[Plugin]]:
        """Make ``cls`` available as ``kind``/``name`` inside a ``with`` block.

        A name that is already taken is refused unless ``replace=True`` (which shadows the installed
        plugin for the duration of the block, e.g. a fake ``dense`` in a test).
        """
        self._check_kind(kind)
        self._check_class(kind, name, cls, REGISTERED)
        if not replace and name in self.names(kind):
            raise DuplicatePluginError(kind, name, [REGISTERED, "an installed plugin or earlier register()"])
        previous = self._registered[kind].get(name)
        self._registered[kind][name] = cls
        try:
            yield cls
        finally:
            if previous is None:
                self._registered[kind].pop(name, None)
            else:
                self._registered[kind][name] = previous

    def twins(self) -> list[tuple[str, str]]:
        """Pairs of installed distributions (name and version) that register the same plugin targets,
        counted once; usually one of them is left behind by a reinstall under another name."""
        for kind in self.kinds:
            self._entry_points(kind)
        return sorted(self._twins)

    def clear_cache(self) -> None:
        """Forget what was read from entry points (after installing a distribution at runtime)."""
        self._points.clear()
        self._twins.clear()
        self._loaded.clear()
        self._failed.clear()


REGISTRY = Registry()

get = REGISTRY.get
names = REGISTRY.names
entries = REGISTRY.entries
build = REGISTRY.build
register = REGISTRY.register
clear_cache = REGISTRY.clear_cache
twins = REGISTRY.twins
