"""``worldkit play``: a local web page to play a world model with the keyboard.

The model rolls out chunk by chunk from the first frames of a recorded test episode, under the actions
the player holds (arrow keys / A-D, W-S for a second action dimension, or sliders); the page shows its
frames as they are generated, and on request the true simulator stepped with the same actions beside
them. The memory policy can be switched while playing (the cache is reset and the last frames are
committed again as context); the page shows the model's milliseconds per frame, the KV-cache bytes held
and the frames per second achieved. A button records what is shown, saved as a GIF (and an MP4 where the
``imageio-ffmpeg`` wheel is installed).

The parts: ``game`` (the model and the simulator, one thread calls them), ``player`` (one connection's
loop and messages), ``server`` (the page, ``/state.json`` and the websocket on 127.0.0.1), ``recording``
(GIF and MP4). ``main`` is the command.

Messages. Server to page: JSON text (``hello``, ``stats`` after every chunk, ``recording``, ``saved``,
``error``) and binary frames: a 9-byte header (stream: 0 model, 1 simulator; height and width, uint16;
frame index, uint32; big-endian) and the frame as raw RGB bytes. Page to server: JSON ``{"type": "action",
"action": [...]}``, ``memory`` (``"memory": NAME``), ``simulator`` / ``pause`` / ``record``
(``"on": bool``), ``restart`` (``"episode": i``).
"""
from __future__ import annotations

import asyncio
from pathlib import Path

from worldkit.errors import WorldkitError
from worldkit.play.game import MEMORY_PRESETS, Chunk, Game, check_env, load_world, memory_choices, memory_spec
from worldkit.play.player import FRAME_HEADER, MODEL, SIMULATOR, Player
from worldkit.play.recording import recording_images, save_recording
from worldkit.play.server import DEFAULT_FPS, DEFAULT_OUT, DEFAULT_PORT, HOST, PAGE_FILE, PlayServer, page

__all__ = ["MEMORY_PRESETS", "Chunk", "Game", "check_env", "load_world", "memory_choices", "memory_spec",
           "FRAME_HEADER", "MODEL", "SIMULATOR", "Player", "recording_images", "save_recording",
           "DEFAULT_FPS", "DEFAULT_OUT", "DEFAULT_PORT", "HOST", "PAGE_FILE", "PlayServer", "page", "main"]


def main(args) -> int:
    """``worldkit play`` (the parsed arguments of ``worldkit.cli``)."""
    memory_spec(args.memory)
    check_env(args.env)
    if not 0 <= args.port <= 65535:
        raise WorldkitError(f"--port: {args.port}; must be 0 (a free port) to 65535")
    if args.fps < 0:
        raise WorldkitError(f"--fps: {args.fps}; must be at least 0 (0: as fast as the model goes)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise WorldkitError(f"--out: {out} is a file; give a folder for the recordings")
    world, eps, seeds = load_world(args.weights, args.env, args.memory, args.context, args.episodes)
    server = PlayServer(world, eps, seeds, memory=args.memory, context=args.context, fps=args.fps, out=args.out,
                        seed=args.seed, port=args.port)
    asyncio.run(server.run(lambda line: print(line, flush=True)))
    return 0
