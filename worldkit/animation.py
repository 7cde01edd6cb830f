"""Animated rollouts: the truth beside every evaluated stage, frame by frame, as a GIF, an MP4 and a
TensorBoard image summary.

Each evaluation keeps its first episodes' frames (``rollouts.npz`` in the stage folder: the truth from
frame 0, context included, and the forecast of the generated frames); ``rollout_frames`` lays them out,
one row per episode and one labelled column per forecast, the truth first. ``rollouts_gif`` writes them
as an animated GIF; ``rollouts_mp4`` as an H.264 MP4 where the ``imageio-ffmpeg`` wheel is installed (it
carries its own ffmpeg; ``pip install worldkit-video[video]``); ``tensorboard_gif`` puts a GIF into a
TensorBoard event file, where the Images tab plays it.
"""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from worldkit.files import atomic_file, atomic_path, atomic_write

SCALE = 2  # pixels per frame pixel in the animation
FPS = 8


def save_rollouts(path: Path, truth: np.ndarray, forecast: np.ndarray, context: int) -> None:
    """truth: (N, T, H, W, 3) uint8 from frame 0; forecast: (N, T - context, H, W, 3) uint8."""
    with atomic_file(path, "wb") as f:
        np.savez_compressed(f, truth=truth, forecast=forecast, context=np.int64(context))


def rollout_frames(stages: Sequence[tuple[str, Path]], episodes: int = 2) -> list:
    """The animation's frames (PIL RGB images): the truth beside every stage's forecast (``(label,
    rollouts.npz)`` pairs, the truth taken from the first); rows are episodes, columns forecasts; context
    frames are marked. Empty when no stage kept its rollouts."""
    from PIL import Image, ImageDraw

    kept = [(label, np.load(p)) for label, p in stages if Path(p).exists()]
    if not kept:
        return []
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
        frames.append(canvas)
    return frames


def gif_bytes(frames: list, fps: float = FPS) -> bytes:
    """An animated GIF of PIL images, flat colours (small files), ``fps`` frames a second, looping."""
    import io

    from PIL import Image

    q = [f.quantize(colors=64, dither=Image.Dither.NONE) for f in frames]
    buf = io.BytesIO()
    q[0].save(buf, format="GIF", save_all=True, append_images=q[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def rollouts_gif(stages: Sequence[tuple[str, Path]], path: Path, episodes: int = 2) -> bool:
    """The animation (``rollout_frames``) as an animated GIF at ``path``; False when no stage kept its rollouts."""
    frames = rollout_frames(stages, episodes)
    if not frames:
        return False
    _write_atomic(Path(path), gif_bytes(frames))
    return True


def mp4_encoder_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("imageio_ffmpeg") is not None


def rollouts_mp4(stages: Sequence[tuple[str, Path]], path: Path, episodes: int = 2) -> bool:
    """The animation as an H.264 MP4 (yuv420p, plays in browsers) at ``path``; False when no stage kept its
    rollouts or no encoder is installed (the ``imageio-ffmpeg`` wheel)."""
    if not mp4_encoder_installed():
        return False
    frames = rollout_frames(stages, episodes)
    if not frames:
        return False
    return write_mp4(frames, path)


def write_mp4(frames: list, path: Path, fps: float = FPS) -> bool:
    """PIL images (one size) as an H.264 MP4 (yuv420p, plays in browsers; odd sides padded white) at
    ``path``, written atomically; False when no encoder is installed (the ``imageio-ffmpeg`` wheel)."""
    if not mp4_encoder_installed():
        return False
    import imageio_ffmpeg

    w, h = frames[0].size
    W, H = w + w % 2, h + h % 2  # yuv420p needs even sides
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".mp4") as tmp:  # the encoder reads the format from the name
        writer = imageio_ffmpeg.write_frames(str(tmp), (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                             macro_block_size=1, ffmpeg_log_level="error")
        writer.send(None)
        for f in frames:
            a = np.full((H, W, 3), 255, dtype=np.uint8)
            a[:h, :w] = np.asarray(f.convert("RGB"))
            writer.send(np.ascontiguousarray(a))
        writer.close()
    return True


def tensorboard_gif(writer, tag: str, gif: bytes, step: int, size: tuple[int, int]) -> None:
    """Log an animated GIF to a ``torch.utils.tensorboard`` SummaryWriter: an image summary whose encoded
    image is the GIF (what ``add_video`` writes, without its moviepy dependency); the Images tab plays it.
    size: (width, height)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(height=size[1], width=size[0], colorspace=3, encoded_image_string=gif)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
