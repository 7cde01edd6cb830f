"""Recordings of ``worldkit play``: what the page showed, saved as a GIF (and an MP4 where an encoder is
installed), the simulator beside the model when it was on."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np


def recording_images(frames: list[tuple[np.ndarray, Optional[np.ndarray]]], scale: Optional[int] = None) -> list:
    """PIL images of recorded (model, simulator-or-None) frames, scaled up (nearest); the simulator beside
    the model, labelled, when any frame has it (a grey tile where it was off)."""
    from PIL import Image, ImageDraw

    h, w = frames[0][0].shape[:2]
    scale = scale or max(1, 128 // max(h, w))
    both = any(s is not None for _, s in frames)
    pad, head = (4, 14) if both else (0, 0)
    size = (w * scale * (2 if both else 1) + pad * (3 if both else 0), h * scale + head + pad)
    out = []
    for model, sim in frames:
        canvas = Image.new("RGB", size, (255, 255, 255))
        tiles = [model, sim if sim is not None else np.full_like(model, 128)] if both else [model]
        for i, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(tile).resize((w * scale, h * scale), Image.NEAREST),
                         (pad + i * (w * scale + pad), head))
        if both:
            draw = ImageDraw.Draw(canvas)
            draw.text((pad, 1), "model", fill=(0, 0, 0))
            draw.text((2 * pad + w * scale, 1), "simulator", fill=(0, 0, 0))
        out.append(canvas)
    return out


def save_recording(frames: list[tuple[np.ndarray, Optional[np.ndarray]]], out: Path, fps: float) -> dict:
    """Write recorded frames as ``play-<time>.gif`` in ``out`` (and ``.mp4`` beside it where an encoder is
    installed); returns ``{"gif": path, "mp4": path or None, "frames": n}``."""
    from worldkit import animation

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"play-{time.strftime('%Y%m%d-%H%M%S')}"
    for i in range(1000):
        base = out / (stem if i == 0 else f"{stem}-{i}")
        if not base.with_suffix(".gif").exists() and not base.with_suffix(".mp4").exists():
            break
    images = recording_images(frames)
    fps = float(min(max(round(fps), 1), 50))  # whole frames a second (GIF delays are centiseconds); browsers
    # play delays under 20 ms slowly
    gif = base.with_suffix(".gif")
    animation._write_atomic(gif, animation.gif_bytes(images, fps=fps))
    mp4 = base.with_suffix(".mp4")
    wrote_mp4 = animation.write_mp4(images, mp4, fps=fps)
    return {"gif": str(gif.resolve()), "mp4": str(mp4.resolve()) if wrote_mp4 else None, "frames": len(frames)}
