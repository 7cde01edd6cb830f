"""One connection of ``worldkit play``: its game loop, the frames it streams and the commands it takes.

Binary frames: a 9-byte header (``FRAME_HEADER``: stream, 0 model or 1 simulator; height and width, uint16;
frame index, uint32; big-endian) and the frame as raw RGB bytes.
"""
from __future__ import annotations

import asyncio
import json
import struct
import sys
import time
from typing import Optional

import numpy as np

from worldkit.errors import WorldkitError
from worldkit.play.game import Chunk, Game
from worldkit.play.recording import save_recording

FRAME_HEADER = struct.Struct(">BHHI")  # stream, height, width, frame index
MODEL, SIMULATOR = 0, 1
MAX_RECORDING = 6000  # frames (4 minutes at 25 a second; about 18 MB of 32x32 frames): then saved


class Player:
    """One connection's game loop: generates chunks on the model thread (the next one while the current
    one is shown), paces the frames to the target rate, applies the page's commands."""

    def __init__(self, server, ws, game: Game):  # server: the PlayServer (its pool, fps, out)
        self.server, self.ws, self.game = server, ws, game
        self.action = np.zeros(game.action_dim, dtype=np.float32)
        self.running = asyncio.Event()
        self.running.set()
        self.recording: Optional[list] = None
        self.recording_times: list[float] = []

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.server.pool, fn, *args)

    async def send(self, **message) -> None:
        await self.ws.send(json.dumps(message))

    async def play(self) -> None:
        fps = self.server.fps
        pending: Optional[asyncio.Future] = None
        deadline = time.perf_counter()
        while True:
            if not self.running.is_set():
                await self.running.wait()
                deadline = time.perf_counter()
            if pending is None:
                pending = asyncio.ensure_future(self.call(self.game.step, self.action.copy()))
            chunk: Chunk = await pending
            # the next chunk is generated while this one is shown (the actions held now)
            pending = asyncio.ensure_future(self.call(self.game.step, self.action.copy())) if self.running.is_set() else None
            for i in range(len(chunk.frames)):
                if fps > 0:
                    now = time.perf_counter()
                    if deadline > now:
                        await asyncio.sleep(deadline - now)
                    elif now - deadline > 0.25:  # fell behind: no burst to catch up
                        deadline = now
                    deadline += 1.0 / fps
                await self.send_frame(chunk, i)
            await self.send(type="stats", frame=chunk.first + len(chunk.frames) - 1, ms_per_chunk=round(chunk.ms, 2),
                            ms_per_frame=round(chunk.ms / len(chunk.frames), 2), kv_bytes=chunk.kv_bytes,
                            memory=chunk.memory, simulator=chunk.simulator is not None,
                            simulator_ms=round(chunk.simulator_ms, 2), action=chunk.action)

    async def send_frame(self, chunk: Chunk, i: int) -> None:
        index = chunk.first + i
        model = chunk.frames[i]
        h, w = model.shape[:2]
        await self.ws.send(FRAME_HEADER.pack(MODEL, h, w, index) + model.tobytes())
        sim = None if chunk.simulator is None else chunk.simulator[i]
        if sim is not None:
            await self.ws.send(FRAME_HEADER.pack(SIMULATOR, *sim.shape[:2], index) + np.ascontiguousarray(sim).tobytes())
        now = time.perf_counter()
        if self.recording is not None:
            self.recording.append((model, sim))
            self.recording_times.append(now)
            if len(self.recording) == MAX_RECORDING:  # long enough: saved, as if the page had stopped it
                asyncio.ensure_future(self.stop_recording())

    async def command(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "action":
            a = np.asarray(message.get("action"), dtype=np.float32).reshape(-1)
            if a.shape != self.action.shape or not np.isfinite(a).all():
                raise WorldkitError(f"action: {message.get('action')!r}; give {len(self.action)} numbers in [-1, 1]")
            self.action = np.clip(a, -1.0, 1.0)
        elif kind == "memory":
            await self.call(self.game.set_memory, str(message.get("memory")))
            await self.send(type="memory", memory=self.game.memory)
        elif kind == "simulator":
            await self.call(self.game.set_simulator, bool(message.get("on")))
            await self.send(type="simulator", on=self.game.simulator)
        elif kind == "restart":
            episode = message.get("episode")
            await self.call(self.game.restart, None if episode is None else int(episode))
            await self.send(type="restart", episode=self.game.episode)
        elif kind == "pause":
            (self.running.clear if message.get("on") else self.running.set)()
            await self.send(type="pause", on=not self.running.is_set())
        elif kind == "record":
            if message.get("on") and self.recording is None:
                self.recording, self.recording_times = [], []
                await self.send(type="recording", on=True)
            elif not message.get("on") and self.recording is not None:
                await self.stop_recording()
        else:
            raise WorldkitError(f"type: unknown message type {kind!r}; choices: action, memory, simulator, restart, "
                                "pause, record")

    def _take_recording(self) -> tuple[list, float]:
        """Stop recording: the frames recorded and the rate they were shown at."""
        frames, times = self.recording or [], self.recording_times
        self.recording, self.recording_times = None, []
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        return frames, (len(times) - 1) / span if span > 0 else self.server.fps

    async def stop_recording(self) -> None:
        """Stop recording and write the recording (on the default thread pool: playing goes on); tell the page
        where (``saved``: what ``save_recording`` returns, or an ``error``)."""
        if self.recording is None:
            return
        frames, fps = self._take_recording()
        await self.send(type="recording", on=False)
        if not frames:
            saved = {"gif": None, "mp4": None, "frames": 0, "error": "nothing was recorded"}
        else:
            try:
                saved = await asyncio.get_running_loop().run_in_executor(None, save_recording, frames,
                                                                         self.server.out, fps)
            except OSError as err:
                saved = {"gif": None, "mp4": None, "frames": len(frames),
                         "error": f"--out: cannot write the recording into {self.server.out} ({err.strerror or err})"}
        await self.send(type="saved", **saved)

    def save_now(self) -> None:
        """Save a recording left running when the page goes away (said on stderr)."""
        frames, fps = self._take_recording()
        if frames:
            saved = save_recording(frames, self.server.out, fps)
            print(f"worldkit play: saved the recording left running: {saved['gif']}", file=sys.stderr)

    async def listen(self) -> None:
        async for raw in self.ws:
            try:
                message = json.loads(raw)
                if not isinstance(message, dict):
                    raise WorldkitError("message: not a JSON object")
                await self.command(message)
            except (WorldkitError, ValueError, TypeError) as err:
                await self.send(type="error", message=str(err).splitlines()[0] if str(err) else type(err).__name__)
