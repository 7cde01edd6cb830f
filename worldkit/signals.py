"""Stopping a command on Ctrl-C (SIGINT) or SIGTERM (what SLURM, Kubernetes and ``docker stop`` send).

Under ``handled()`` both signals raise ``KeyboardInterrupt`` in the main thread (``Terminated``, a
subclass, for SIGTERM), so they take the same way out: training saves its checkpoint, the run names
its resume command, and the CLI exits with 128 + the signal number (130, 143). A signal that arrives
while a training step is being applied (between ``hold()`` and ``release()``: the optimizer step, the
learning-rate schedule, the EMA) is raised when the step is whole, so the checkpoint is the one of the
last completed optimizer step. Anywhere else (data generation, a forward pass, evaluation) it is
raised at once.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would raise ``KeyboardInterrupt``."""


_received: Optional[int] = None  # the last stop signal received under handled()
_pending: Optional[int] = None  # received while held, raised at release()
_held = False


def _raise(signum: int) -> None:
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame) -> None:
    global _received, _pending
    _received = signum
    if _held:
        _pending = signum
        return
    _raise(signum)


def received() -> Optional[int]:
    """The last stop signal received under ``handled()``, or None."""
    return _received


def exit_code(default: int = 130) -> int:
    """128 + the signal that stopped the command (``default`` when it was not a signal)."""
    return 128 + _received if _received is not None else default


def interrupt(message: str) -> KeyboardInterrupt:
    """The exception that stops the command with ``message``: ``Terminated`` after SIGTERM, else
    ``KeyboardInterrupt`` (re-raised where a stop is given a message such as its resume command)."""
    return Terminated(message) if _received == signal.SIGTERM else KeyboardInterrupt(message)


def describe() -> str:
    """How the command was stopped, in a word or two."""
    return "terminated (SIGTERM)" if _received == signal.SIGTERM else "interrupted"


@contextmanager
def handled() -> Iterator[None]:
    """Install the stop handlers for the duration (in the main thread; elsewhere a no-op) and restore
    the previous ones after."""
    global _received, _pending, _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received, _pending, _held = None, None, False
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        _held, _pending = False, None


def hold() -> None:
    """Defer stop signals: they are raised by ``release()``."""
    global _held
    _held = True


def release(raise_pending: bool = True) -> None:
    """End ``hold()``; a stop signal that arrived meanwhile is raised now (or dropped: ``raise_pending=False``)."""
    global _held, _pending
    _held = False
    signum, _pending = _pending, None
    if signum is not None and raise_pending:
        _raise(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Stop signals are not raised inside (a checkpoint being written stays whole); one that arrives
    meanwhile is dropped: the caller is already stopping."""
    global _held, _pending
    was, _held = _held, True
    try:
        yield
    finally:
        _held = was
        if not was:
            _pending = None
