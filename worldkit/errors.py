"""User-facing errors. The CLI prints them as ``error: ...`` lines without a traceback and exits 2.

Anything that is not a ``WorldkitError`` is a bug and keeps its traceback.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional


class WorldkitError(Exception):
    """An error the user can fix (bad input, missing file, a broken plugin installation)."""

    def lines(self) -> list[str]:
        """The message as the lines the CLI prints after ``error: ``."""
        return str(self).splitlines() or [type(self).__name__]


class Issue(NamedTuple):
    """One problem in a configuration: where it is, the offending value and what is wrong."""

    path: str  # dotted field path, e.g. "memory.window_frames" or "stages[1].trainer.type"
    value: Any  # the bad value (``MISSING`` when the field is absent)
    message: str  # what is wrong and what is allowed
    source: Optional[str] = None  # where it came from when not the error's file, e.g. "--set model.width=x"


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


class ConfigError(WorldkitError):
    """An experiment configuration failed validation; carries every issue found, not only the first."""

    def __init__(self, issues: list[Issue], source: Optional[str] = None):
        self.issues = list(issues)
        self.source = source  # the file (or "--set") the issues refer to
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        out = []
        for issue in self.issues:
            where = [p for p in (issue.source or self.source, issue.path) if p]
            shown = "" if issue.value is MISSING else _show(issue.value)
            message = _one_line(issue.message)
            said = shown and message.endswith((f"got {shown}", f": {shown}"))  # already in the message
            got = "" if issue.value is MISSING or said else f" (got {shown})"
            out.append(": ".join(where + [message + got]))
        return out


def _one_line(message: str) -> str:
    """A message on one line (one line per issue, whatever a plugin or library says): its lines joined
    by "; ", or by a space after a colon."""
    out = ""
    for part in (p.strip() for p in message.splitlines()):
        if part:
            out += ("" if not out else " " if out.endswith(":") else "; ") + part
    return out


def _show(value: Any) -> str:
    """A short repr of a bad value for an error line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------------------
# Registry errors: raised by ``worldkit.registry``, turned into config issues by ``worldkit.config``.


class PluginError(WorldkitError):
    """A plugin could not be found or loaded; ``reason`` is the message without the plugin's name."""

    reason: str = ""


class UnknownPluginError(PluginError):
    """No plugin of this kind has this name."""

    def __init__(self, kind: str, name: str, choices: list[str], suggestion: Optional[str]):
        self.kind, self.name, self.choices, self.suggestion = kind, name, choices, suggestion
        hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
        listed = ", ".join(choices) if choices else "none installed"
        super().__init__(f"unknown {kind} plugin {name!r}{hint}; choices: {listed}")


class DuplicatePluginError(PluginError):
    """Two installed distributions register the same name for one kind."""

    def __init__(self, kind: str, name: str, origins: list[str]):
        self.kind, self.name, self.origins = kind, name, origins
        self.reason = f"registered more than once, by: {', '.join(origins)}; uninstall one of them"
        super().__init__(f"{kind} plugin {name!r} is {self.reason}")


class BrokenPluginError(PluginError):
    """A plugin's entry point failed to import."""

    def __init__(self, kind: str, name: str, origin: str, error: str):
        self.kind, self.name, self.origin, self.error = kind, name, origin, error
        self.reason = f"failed to import: {error}"
        super().__init__(f"{kind} plugin {name!r} from {origin} {self.reason}")


class PluginTypeError(PluginError):
    """An entry point names something that is not a subclass of its kind's interface."""

    def __init__(self, kind: str, name: str, origin: str, message: str):
        self.kind, self.name, self.origin = kind, name, origin
        self.reason = f"refused: {message}"
        super().__init__(f"{kind} plugin {name!r} from {origin} is {self.reason}")
