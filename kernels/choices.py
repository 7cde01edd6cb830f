"""What the Triton paths chose in this process, in words: the PBSA launch configurations kept per
problem class (with every candidate's time when tuned) and the block selection ``auto`` kept per class.
Asks the kernel modules (their ``choices()``) only if something already imported them, so it never imports
Triton."""
from __future__ import annotations

import math
import sys


def problem_label(key: tuple) -> str:
    """A PBSA tuner problem class (``pbsa_triton.tuner.problem``) in words: kernel, block, head dim,
    dtype, lists, and the sizes rounded up to powers of two (query blocks, list length, slots, batch x
    heads); query-tail when the queries end in a short block, ragged when key blocks have lengths; the
    device class."""
    if len(key) != 12:  # not a key the kernels make
        return str(key)
    name, blk, d, dtype, per_head, nqb, k, ns, bh, even_q, even_k, device = key
    return (f"{name} BLK={blk} D={d} {str(dtype).removeprefix('torch.')} {'per-head' if per_head else 'shared'} "
            f"NQB<={nqb} K<={k} NS<={ns} BH<={bh}" + ("" if even_q else " query-tail") + ("" if even_k else " ragged")
            + f" on {device}")


def config_label(c: dict) -> str:
    """A launch configuration in a few characters: M128 N64 w8 s3 (x2 for a split list)."""
    if not {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"} <= c.keys():
        return " ".join(f"{k}={v}" for k, v in c.items())
    short = f"M{c['BLOCK_M']} N{c['BLOCK_N']} w{c['num_warps']} s{c['num_stages']}"
    return short + (f" x{c['SPLIT']}" if c.get("SPLIT", 1) > 1 else "")


def selection_label(key: tuple) -> str:
    """A block-selection problem class (``topk_triton.auto_impl``) in words."""
    if len(key) < 9:
        return str(key)
    device, dtype, b, h, shared, nqb, nc, d, forced = key[:9]
    dtypes = str(dtype).removeprefix("torch.")
    if len(key) > 9 and key[9] != dtype:  # the pooled keys' dtype, when it differs
        dtypes += "/" + str(key[9]).removeprefix("torch.")
    return (f"{b} x {h} heads{' (one shared list)' if shared else ''}, {nqb} query blocks, up to {nc} candidates, "
            f"head dim {d}{', own block forced' if forced else ''}, {dtypes} on {device}")


def kernel_choices() -> dict:
    """{"pbsa": [...], "selection": [...]}, each entry a problem class with what was kept and the times
    (ms; null where a candidate failed); empty lists when the kernels did not run."""
    tuner, topk = (sys.modules.get(f"worldkit_kernels.{name}") for name in ("pbsa_triton.tuner", "topk_triton"))
    ms = lambda t: None if math.isinf(t) else round(t, 4)  # noqa: E731
    out = {"pbsa": [], "selection": []}
    for kept in tuner.choices() if tuner is not None else []:
        entry = {"class": problem_label(kept["key"]), "kept": config_label(kept["kept"]), "tuned": kept["tuned"]}
        if "timings" in kept:
            entry["timings_ms"] = {config_label(c): ms(t) for c, t in kept["timings"]}
        out["pbsa"].append(entry)
    for kept in topk.choices() if topk is not None else []:
        entry = {"class": selection_label(kept["key"]), "kept": kept["kept"],
                 "timings_ms": {impl: ms(t) for impl, t in kept["timings"].items()}}
        if "failure" in kept:
            entry["kernel_failed"] = kept["failure"]
        out["selection"].append(entry)
    return out
