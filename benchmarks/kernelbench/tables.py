"""The timing rows as text: a line each while they run (``print_rows``), the markdown table with
TFLOP/s and speedups against SDPA (``table``), and the issue's targets, met or not (``targets``).

A row: (frames, KV tokens, block, density, method, result, computed pairs); a result is
(forward ms, forward+backward ms), either of them, or the whole, "n/a (reason)" or "-". TFLOP/s count only
computed blocks for the sparse methods (PBSA, Flex) and all keys for the dense ones; forward+backward
counts 3.5x the forward (FA convention)."""
from __future__ import annotations

from . import problem


def fmt(result, pairs, bases, i):
    """'ms, TFLOP/s, speedups' for pass i (0 forward, 1 forward+backward); ``bases``: {label: the result
    of a method each speedup is taken against}."""
    ms = result if isinstance(result, str) else result[i]
    if isinstance(ms, str):
        return ms
    flops = 4 * problem.HEAD_DIM * pairs * (1.0 if i == 0 else 3.5)
    speeds = [f"{b[i] / ms:.2f}x {label}" for label, b in bases.items()
              if not isinstance(b, str) and not isinstance(b[i], str)]
    return ", ".join([f"{ms:.3f} ms", f"{flops / ms / 1e9:.0f} TF/s"] + speeds)


def dense_bases(rows):
    """(frames, block) -> {"flash": its SDPA-flash result, "cuDNN": its cuDNN result}."""
    bases = {}
    for frames, _, blk, _, name, res, _ in rows:
        if name in ("sdpa-flash", "sdpa-cudnn"):
            bases.setdefault((frames, blk), {})["flash" if name == "sdpa-flash" else "cuDNN"] = res
    return bases


def table(rows):
    """Markdown table of all rows; speedups against SDPA flash and cuDNN of the same frames and block."""
    lines = [
        "| frames | KV tokens | block | density | method | fwd: ms, TFLOP/s, speedup vs SDPA | "
        "fwd+bwd: ms, TFLOP/s, speedup vs SDPA |",
        "|---|---|---|---|---|---|---|",
    ]
    bases = dense_bases(rows)
    for frames, lk, blk, dens, name, res, pairs in rows:
        b = bases.get((frames, blk), {})
        lines.append(f"| {frames} | {lk} | {blk} | {dens:.3f} | {name} | {fmt(res, pairs, b, 0)} | {fmt(res, pairs, b, 1)} |")
    return "\n".join(lines)


def print_rows(rows):
    bases = dense_bases(rows)
    for frames, lk, blk, dens, name, res, pairs in rows:
        b = bases.get((frames, blk), {})
        print(f"  F={frames:2d} KV={lk:6d} BLK={blk:3d} d={dens:.3f} {name:24s} fwd {fmt(res, pairs, b, 0):48s} "
              f"fwd+bwd {fmt(res, pairs, b, 1)}")


def targets(rows, frames=21, BLK=128) -> str:
    """The issue's forward targets at ``frames`` and ``BLK``, met or not, as markdown lines: at 25 %
    density PBSA with its selection >= 4.5x SDPA-flash and >= 2.7x cuDNN (the kernel alone beside it);
    at full density PBSA within 1.1x of cuDNN's time."""
    def fwd(name, density):
        for f, _, blk, d, n, res, _ in rows:
            if (f, blk, n) == (frames, BLK, name) and abs(d - density) < 0.02:
                return None if isinstance(res, str) or isinstance(res[0], str) else res[0]
        return None

    def against(t, base, label, goal=None):
        if base is None:
            return f"{label} not measured"
        verdict = "" if goal is None else f" (target >= {goal}x: {'met' if base / t >= goal else 'MISSED'})"
        return f"{base / t:.2f}x {label} ({base:.3f} ms){verdict}"

    flash, cudnn = fwd("sdpa-flash", 1.0), fwd("sdpa-cudnn", 1.0)
    lines = []
    for name in ("pbsa + Triton selection", "pbsa + PyTorch selection", "pbsa kernel"):
        t = fwd(name, 0.25)
        goals = (None, None) if name == "pbsa kernel" else (4.5, 2.7)
        lines.append(f"- 25 %, {name}: " + ("not measured" if t is None else f"{t:.3f} ms, " + ", ".join(
            (against(t, flash, "SDPA-flash", goals[0]), against(t, cudnn, "cuDNN", goals[1])))))
    t = fwd("pbsa kernel", 1.0)
    if t is not None and cudnn is not None:
        lines.append(f"- full density, pbsa kernel: {t:.3f} ms, {t / cudnn:.2f}x cuDNN's time ({cudnn:.3f} ms; "
                     f"target <= 1.1x: {'met' if t / cudnn <= 1.1 else 'MISSED'})")
    else:
        lines.append("- full density, pbsa kernel against cuDNN: not measured")
    return "\n".join(lines)
