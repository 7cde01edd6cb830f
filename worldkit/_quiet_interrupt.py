"""Imported first by the data-generation fork server, whose workers inherit its state: they ignore
Ctrl-C (SIGINT), which the terminal sends to every process of the job; the main process handles it and
terminates them. A worker that was still starting when the pool shut down fails to read its setup from
the gone parent; that teardown error is not printed either. Other errors are."""
import signal
import sys

signal.signal(signal.SIGINT, signal.SIG_IGN)

_TEARDOWN = (EOFError, FileNotFoundError, ConnectionError)


def _hook(kind, value, tb):
    if issubclass(kind, _TEARDOWN):
        return
    sys.__excepthook__(kind, value, tb)


sys.excepthook = _hook
