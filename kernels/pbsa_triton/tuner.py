"""The PBSA kernels' launch tuner: which of a kernel's candidate configurations a launch runs.

Each kernel lists its candidates beside it (``forward.FWD_CONFIGS``, ``backward.DQ_CONFIGS``,
``backward.DKDV_CONFIGS``). The default is the first one whose tiles fit the block's tile uncapped (so a
block of 64 rows gets a configuration made for it, not a 128-row one cut down). On a CUDA device each
kernel times its candidates once per problem class (``problem``: the kernel, the problem's shapes
rounded to powers of two, its dtype and the device's model) and keeps the fastest; under the
interpreter, or with WORLDKIT_PBSA_TUNE=0, the default runs, and where it is out of shared memory (a
smaller GPU, a big head dim, fp32) the next one that fits. Tile sizes are capped by the block's tile.
``choices()`` says what this process kept, ``reset()`` forgets it.
"""
from __future__ import annotations

import os
import statistics
from typing import Callable, Optional

import torch
from torch import Tensor
from triton.runtime.errors import OutOfResources

from .common import _pow2

_tuned: dict[tuple, dict] = {}  # tuned: the fastest candidate, per problem class
_fits: dict[tuple, dict] = {}  # untuned: the first candidate that fits the device, per problem class
_timings: dict[tuple, list[tuple[dict, float]]] = {}  # tuned: every candidate's ms, per problem class
_capped: dict[tuple, list[dict]] = {}  # ``candidates``, per tile and the list's contents
_launched: dict[tuple, tuple[list[dict], list[dict]]] = {}  # per problem class and tile: the list, its candidates
_device_classes: dict[torch.device, str] = {}


def tuning() -> bool:
    """Whether launches time their candidates: on a GPU (not under the interpreter), unless
    WORLDKIT_PBSA_TUNE=0."""
    return os.environ.get("TRITON_INTERPRET", "0") != "1" and os.environ.get("WORLDKIT_PBSA_TUNE", "1") != "0"


def device_class(device: torch.device) -> str:
    """The devices that share kept configurations: a CUDA device's model, else the device type."""
    name = _device_classes.get(device)
    if name is None:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        _device_classes[device] = name
    return name


def problem(kernel: str, q: Tensor, k: Tensor, index: Tensor, even_q: bool, even_k: bool) -> tuple:
    """The class of problems that share a kept configuration: the kernel, block, head dim, dtype, list
    layout, the work per (batch x head) rounded to powers of two, whether every query and key block is
    full, and the device's class."""
    B, H, Tq, D = q.shape
    NS, BLK = k.shape[1], k.shape[3]
    return (kernel, BLK, D, q.dtype, index.shape[1] > 1, _pow2(-(-Tq // BLK)), _pow2(index.shape[3]), _pow2(NS),
            _pow2(B * H), even_q, even_k, device_class(q.device))


def candidates(configs: list[dict], tile: int) -> list[dict]:
    """``configs`` for a tile: the default (the first whose tiles need no capping) first, every tile size
    capped to ``tile``, duplicates dropped. Remembered per tile and the list's contents (each launch
    asks; a list edited since is another list)."""
    key = (tile, *(tuple(cfg.items()) for cfg in configs))
    capped = _capped.get(key)
    if capped is not None:
        return capped
    fits = [i for i, cfg in enumerate(configs) if all(v <= tile for k, v in cfg.items() if k.startswith("BLOCK_"))]
    ordered = [configs[fits[0]]] + configs[:fits[0]] + configs[fits[0] + 1:] if fits else configs
    capped = []
    for cfg in ordered:
        c = {k: (min(v, tile) if k.startswith("BLOCK_") else v) for k, v in cfg.items()}
        if c not in capped:
            capped.append(c)
    _capped[key] = capped
    return capped


def _time_ms(run: Callable[[], None], flush: Tensor, reps: int = 10) -> float:
    """Median ms of single launches, each after ``flush`` (a buffer larger than the L2 cache) is zeroed,
    as ``triton.testing.do_bench`` times and as attention runs inside a model, between other layers:
    back-to-back launches on a warm cache rank configurations differently when the lists touch few blocks."""
    run()  # compile and warm up
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        start.record()
        run()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def launch(key: tuple, configs: list[dict], tile: int, run: Callable[[dict], None],
           timer: Optional[Callable[[Callable[[], None]], float]] = None) -> dict:
    """Run ``run`` with the configuration chosen for ``key`` (a ``problem``): the default (the first of
    ``configs`` whose tiles need no capping to ``tile``) or, out of shared memory, the next that fits the
    device; or when tuning the fastest of ``configs`` (capped by the tile, duplicates dropped), timed on
    the first call and kept.
    The launches must be idempotent: every candidate overwrites the whole output."""
    memo = _launched.get((key, tile))  # cheaper than ``candidates``' key, made of the whole list
    if memo is None or memo[0] != configs:
        memo = _launched[(key, tile)] = ([dict(c) for c in configs], candidates(configs, tile))
    capped = memo[1]
    if not tuning() or len(capped) == 1:  # the first that fits this device (a big head dim or fp32 may not)
        start = capped.index(_fits[key]) if _fits.get(key) in capped else 0
        for i, c in enumerate(capped[start:], start):
            try:
                run(c)
            except OutOfResources:
                if i == len(capped) - 1:
                    raise
                continue
            _fits[key] = c
            return c
    elif key in _tuned:
        best = _tuned[key]
    else:
        if timer is None:  # a flush buffer (256 MiB on the current device) lives while this class is tuned
            try:
                flush = torch.empty(64 * 2**20, dtype=torch.int32, device="cuda")
            except torch.OutOfMemoryError:  # no room: time on whatever the cache holds
                flush = torch.empty(0, dtype=torch.int32, device="cuda")
            timer = lambda fn: _time_ms(fn, flush)  # noqa: E731
        times = []
        for c in capped:
            try:
                times.append(timer(lambda c=c: run(c)))
            except Exception:  # e.g. out of shared memory for this configuration
                times.append(float("inf"))
        best = capped[min(range(len(capped)), key=times.__getitem__)]
        _tuned[key] = best
        _timings[key] = list(zip(capped, times))
    run(best)
    return best


def choices() -> list[dict]:
    """What the launches kept in this process, one entry per problem class (ordered by its key's
    text): {"key", "kept", "tuned"} and, where the candidates were timed, "timings": [(config, ms)]
    (inf where a candidate failed)."""
    out = []
    for key in sorted(set(_tuned) | set(_fits), key=str):
        entry = {"key": key, "kept": dict(_tuned.get(key, _fits.get(key))), "tuned": key in _tuned}
        if key in _timings:
            entry["timings"] = [(dict(c), t) for c, t in _timings[key]]
        out.append(entry)
    return out
