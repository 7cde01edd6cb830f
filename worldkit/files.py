"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

The data goes to a temporary name in the target's folder (``.<name>.tmp-<pid>-<random>``: the move
stays on one filesystem, two writers never share a name, and a pattern such as ``*.pt`` never matches
one left by a killed process), is flushed to the disk (fsync), and is moved onto the target with
``os.replace``. When the writing fails the temporary file is removed.

- ``atomic_write(path, text_or_bytes)``: the usual case.
- ``atomic_file(path, "w" | "wb")``: a file object, for writers that stream into one.
- ``atomic_path(path)``: a temporary path, for writers that want a file name (``torch.save``; with
  ``suffix=".png"`` for ``savefig``, ``".mp4"`` for a video encoder: they read the format from it).
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Optional, Union


@contextmanager
def atomic_path(path: Union[str, os.PathLike], suffix: Optional[str] = None) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder; ending in ``suffix`` when given) for the block to
    write; after the block the file is fsynced and moved onto ``path``; when the block raises it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix or ''}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: Union[str, os.PathLike], mode: str = "wb") -> Iterator[IO]:
    """A new file opened for writing (``mode`` "w": text, "wb": bytes) on a temporary name beside
    ``path``, which it replaces once the block ends (``atomic_path``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode.replace("w", "x")) as f:
        yield f


def atomic_write(path: Union[str, os.PathLike], data: Union[str, bytes]) -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically; returns ``path``."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    return Path(path)
