"""Animated rollouts: the truth beside every evaluated stage, frame by frame, as a GIF.

Each evaluation keeps its first episodes' frames (``rollouts.npz`` in the stage folder: the truth from
frame 0, context included, and the forecast of the generated frames); ``rollouts_gif`` lays them out,
one row per episode and one labelled column per forecast, the truth first, and writes an animated GIF.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

SCALE = 2  # pixels per frame pixel in the animation
FPS = 8


def save_rollouts(path: Path, truth: np.ndarray, forecast: np.ndarray, context: int) -> None:
    """truth: (N, T, H, W, 3) uint8 from frame 0; forecast: (N, T - context, H, W, 3) uint8."""
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez_compressed(tmp, truth=truth, forecast=forecast, context=np.int64(context))
    os.replace(tmp, path)


def rollouts_gif(stages: Sequence[tuple[str, Path]], path: Path, episodes: int = 2) -> bool:
    """One GIF of the truth beside every stage's forecast (``(label, rollouts.npz)`` pairs, the truth
    taken from the first): rows are episodes, columns forecasts; context frames are marked. False when
    no stage kept its rollouts."""
    from PIL import Image, ImageDraw

    kept = [(label, np.load(p)) for label, p in stages if Path(p).exists()]
    if not kept:
        return False
    first = kept[0][1]
    truth, context = first["truth"], int(first["context"])
    n = min(episodes, truth.shape[0], *(k["forecast"].shape[0] for _, k in kept))
    T, H, W = truth.shape[1:4]
    columns = [("truth", truth[:n])] + [
        (label, np.concatenate([truth[:n, :context], k["forecast"][:n, : T - context]], 1)) for label, k in kept]
    h, w, pad, head = H * SCALE, W * SCALE, 4, 24
    size = (len(columns) * (w + pad) + pad, head + n * (h + pad) + pad)
    frames = []
    for t in range(T):
        canvas = Image.new("RGB", size, (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        for c, (label, video) in enumerate(columns):
            x = pad + c * (w + pad)
            for i, line in enumerate(textwrap.wrap(label.replace("_", " "), max(4, w // 6))[:2]):
                draw.text((x, 1 + 11 * i), line, fill=(0, 0, 0))
            for e in range(n):
                tile = Image.fromarray(video[e, t]).resize((w, h), Image.NEAREST)
                canvas.paste(tile, (x, head + pad + e * (h + pad)))
        note = f"t={t}" + (" (context)" if t < context else "")
        draw.text((size[0] - 6 * len(note) - pad, size[1] - 12), note, fill=(90, 90, 90))
        frames.append(canvas.quantize(colors=64, dither=Image.Dither.NONE))  # flat colours: small files
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.gif")
    frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=int(1000 / FPS), loop=0)
    os.replace(tmp, path)
    return True
