"""``worldkit play``: a local web page to play a world model with the keyboard.

The model rolls out chunk by chunk from the first frames of a recorded test episode, under the actions
the player holds (arrow keys / A-D, W-S for a second action dimension, or sliders); the page shows its
frames as they are generated, and on request the true simulator stepped with the same actions beside
them. The memory policy can be switched while playing (the cache is reset and the last frames are
committed again as context); the page shows the model's milliseconds per frame, the KV-cache bytes held
and the frames per second achieved. A button records what is shown, saved as a GIF (and an MP4 where the
``imageio-ffmpeg`` wheel is installed).

One asyncio server (the ``websockets`` package) on 127.0.0.1 answers ``GET /`` with the page (one
self-contained HTML file), ``/state.json`` with what the page shows before the game streams (the settings
and the starting frame) and ``/ws`` with the game's websocket (refused to pages of another origin). Each
connection plays its own game; every model and simulator call runs on one worker thread, so the event loop
stays responsive and MuJoCo's GL context stays on the thread that made it.

Messages. Server to page: JSON text (``hello``, ``stats`` after every chunk, ``recording``, ``saved``,
``error``) and binary frames: a 9-byte header (stream: 0 model, 1 simulator; height and width, uint16;
frame index, uint32; big-endian) and the frame as raw RGB bytes. Page to server: JSON ``{"type": "action",
"action": [...]}``, ``memory`` (``"memory": NAME``), ``simulator`` / ``pause`` / ``record``
(``"on": bool``), ``restart`` (``"episode": i``).
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import errno
import json
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from worldkit import data as wk_data
from worldkit import registry
from worldkit.errors import PluginError, WorldkitError

HOST = "127.0.0.1"  # never another interface: the page drives a process on this machine
DEFAULT_PORT = 8765
DEFAULT_FPS = 25.0
DEFAULT_OUT = "play_recordings"
FRAME_HEADER = struct.Struct(">BHHI")  # stream, height, width, frame index
MODEL, SIMULATOR = 0, 1
MAX_RECORDING = 6000  # frames (4 minutes at 25 a second; about 18 MB of 32x32 frames): then saved

PAGE_FILE = Path(__file__).with_name("play.html")  # the page: inline HTML, CSS and JavaScript, no CDN


def page() -> str:
    """The page served at ``/`` (read from ``play.html``, shipped with the package)."""
    return PAGE_FILE.read_text(encoding="utf-8")


# The memory policies offered by name (any other installed memory plugin is offered with its defaults).
MEMORY_PRESETS = {
    "dense": {"type": "dense"},
    "sliding_window": {"type": "sliding_window", "window_frames": 9},
    "sink": {"type": "sink"},
    "persistent_block": {"type": "persistent_block", "sink_frames": 1, "persistent_frames": 2, "window_frames": 6},
}


def memory_choices() -> list[str]:
    """The presets, then every other installed memory plugin."""
    return list(MEMORY_PRESETS) + [n for n in registry.names("memory") if n not in MEMORY_PRESETS]


def memory_spec(name: str, field: str = "--memory") -> dict:
    """The plugin spec of a memory policy offered by name; a user error naming ``field`` otherwise."""
    choices = memory_choices()
    if name not in choices:
        raise WorldkitError(f"{field}: unknown memory policy {name!r}; choices: {', '.join(choices)}")
    return dict(MEMORY_PRESETS.get(name, {"type": name}))


def check_env(name: Optional[str]) -> None:
    """A user error naming ``--env`` when no env plugin is called ``name``."""
    if name is None:
        return
    try:
        registry.get("env", name)
    except PluginError as err:
        raise WorldkitError(f"--env: {err}") from None


# --------------------------------------------------------------------------------------------------
# The game: a model rollout and, on request, the simulator beside it. One thread calls it.


@dataclass
class Chunk:
    """One generated chunk: frames (Fc, H, W, 3) uint8, the simulator's beside them (or None)."""

    first: int  # index of its first frame in the episode
    frames: np.ndarray
    simulator: Optional[np.ndarray]
    action: list[float]
    ms: float  # model time of the chunk (denoising and commit)
    kv_bytes: int  # KV-cache bytes held after the chunk's commit
    simulator_ms: float
    memory: str  # the memory policy it was generated under


class Game:
    """A world model played from the first ``context`` frames of recorded test episodes (``episodes``,
    ``worldkit.api.Episodes``; ``seeds`` their simulator seeds). Not thread-safe: call it from one thread."""

    def __init__(self, world, episodes, seeds: list[int], memory: str = "sliding_window", context: int = 10,
                 seed: int = 0, episode: int = 0):
        self.world, self.episodes, self.seeds = world, episodes, list(seeds)
        self.model = world.model
        self.chunk_frames = self.model.chunk_frames
        self.action_dim = int(self.model.hparams["action_dim"])
        self.context, self.seed = context, seed
        self.memory = memory
        memory_spec(memory)
        self.device = next(self.model.parameters()).device
        self.env = None
        self.simulator = False
        self.restart(episode)

    # ---- state ----------------------------------------------------------------------------------
    def restart(self, episode: Optional[int] = None) -> None:
        """Back to the context of ``episode`` (default: the current one): the cache, the noise, the simulator."""
        episode = self.episode if episode is None else episode
        if not 0 <= episode < len(self.episodes):
            raise WorldkitError(f"episode: {episode} is not one of the {len(self.episodes)} recorded episodes "
                                f"(0-{len(self.episodes) - 1})")
        self.episode = episode
        ctx = slice(episode, episode + 1), slice(0, self.context)
        self.recent = self.episodes.frames[ctx].to(self.device), self.episodes.actions[ctx].to(self.device)
        self.frame = self.context  # index of the next frame
        self.history: list[np.ndarray] = []  # the actions taken after the context, one per frame
        self.generator = torch.Generator().manual_seed(self.seed)
        self._recommit()
        if self.simulator:
            self._sync_simulator()

    def set_memory(self, name: str) -> None:
        """Switch the memory policy: a fresh cache holding the last ``context`` frames."""
        memory_spec(name, "memory")
        self.memory = name
        self._recommit()

    def set_simulator(self, on: bool) -> None:
        """Step the true environment beside the model (brought to where the model is: the episode's context,
        then every action taken since)."""
        self.simulator = bool(on)
        if self.simulator:
            self._sync_simulator()

    def _recommit(self) -> None:
        from worldkit.rollout import Rollout

        w = self.world
        self.rollout = Rollout(self.model, registry.build("memory", memory_spec(self.memory, "memory")),
                               registry.build("selector", "all"), registry.build("attention", "sdpa"),
                               steps=w.sampler_steps, shift=w.shift, train_frames=w.train_frames)
        with torch.no_grad():
            self.rollout.reset(1, device=self.device)
            self.rollout.commit_frames(*self.recent)

    def _sync_simulator(self) -> None:
        if self.env is None:
            self.env = registry.build("env", self.world.env, self.episodes.env_config)
        self.env.reset(self.seeds[self.episode])
        taken = self.episodes.actions[self.episode, 1 : self.context].numpy()  # actions[0] led to frame 0
        for a in [*taken, *self.history]:
            self.env.step(a)

    def simulator_frame(self) -> np.ndarray:
        """The simulator's current frame (H, W, 3) uint8 (simulator on)."""
        return self.env.render()

    # ---- play -----------------------------------------------------------------------------------
    def step(self, action) -> Chunk:
        """Generate the next chunk under ``action`` (A,) held for each of its frames (clipped to [-1, 1])."""
        from worldkit.frames import tensor_to_frames

        a = np.clip(np.asarray(action, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if a.shape != (self.action_dim,):
            raise WorldkitError(f"action: {len(a)} values; the model takes {self.action_dim}")
        fc = self.chunk_frames
        acts = torch.from_numpy(np.repeat(a[None, None], fc, axis=1)).to(self.device)  # (1, Fc, A)
        with torch.no_grad():
            x = self.rollout.chunk(acts, generator=self.generator)  # (1, Fc, 3, H, W)
        timing = self.rollout.timings[-1]
        sim, sim_ms = None, 0.0
        if self.simulator:
            t0 = time.perf_counter()
            sim = np.stack([self._sim_step(a) for _ in range(fc)])
            sim_ms = (time.perf_counter() - t0) * 1e3
        self.history.extend([a] * fc)
        frames, actions = self.recent
        self.recent = (torch.cat([frames, x], 1)[:, -self.context:], torch.cat([actions, acts], 1)[:, -self.context:])
        first, self.frame = self.frame, self.frame + fc
        return Chunk(first, tensor_to_frames(x[0]), sim, [float(v) for v in a], timing.total_ms, timing.kv_bytes,
                     sim_ms, self.memory)

    def _sim_step(self, a: np.ndarray) -> np.ndarray:
        self.env.step(a)
        return self.env.render()

    def close(self) -> None:
        if self.env is not None and hasattr(self.env, "close"):
            self.env.close()
        self.env = None


# --------------------------------------------------------------------------------------------------
# Recordings


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


# --------------------------------------------------------------------------------------------------
# The server


class _Rate:
    """Frames per second over the last ``seconds``."""

    def __init__(self, seconds: float = 2.0):
        self.seconds, self.times = seconds, deque()

    def tick(self, now: float) -> None:
        self.times.append(now)
        while self.times and now - self.times[0] > self.seconds:
            self.times.popleft()

    def fps(self) -> float:
        if len(self.times) < 2 or self.times[-1] == self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


class Player:
    """One connection's game loop: generates chunks on the model thread (the next one while the current
    one is shown), paces the frames to the target rate, applies the page's commands."""

    def __init__(self, server: "PlayServer", ws, game: Game):
        self.server, self.ws, self.game = server, ws, game
        self.action = np.zeros(game.action_dim, dtype=np.float32)
        self.running = asyncio.Event()
        self.running.set()
        self.recording: Optional[list] = None
        self.recording_times: list[float] = []
        self.rate = _Rate()

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
                            fps=round(self.rate.fps(), 2), target_fps=fps, memory=chunk.memory,
                            simulator=chunk.simulator is not None, simulator_ms=round(chunk.simulator_ms, 2),
                            action=chunk.action, episode=self.game.episode)

    async def send_frame(self, chunk: Chunk, i: int) -> None:
        index = chunk.first + i
        model = chunk.frames[i]
        h, w = model.shape[:2]
        await self.ws.send(FRAME_HEADER.pack(MODEL, h, w, index) + model.tobytes())
        sim = None if chunk.simulator is None else chunk.simulator[i]
        if sim is not None:
            await self.ws.send(FRAME_HEADER.pack(SIMULATOR, *sim.shape[:2], index) + np.ascontiguousarray(sim).tobytes())
        now = time.perf_counter()
        self.rate.tick(now)
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


class PlayServer:
    """The page and the game websocket for one world model (``worldkit.api.World``) on 127.0.0.1."""

    def __init__(self, world, episodes, seeds: list[int], memory: str = "sliding_window", context: int = 10,
                 fps: float = DEFAULT_FPS, out: str = DEFAULT_OUT, seed: int = 0, port: int = DEFAULT_PORT):
        memory_spec(memory)
        self.world, self.episodes, self.seeds = world, episodes, seeds
        self.memory, self.context, self.fps, self.out, self.seed = memory, context, float(fps), Path(out), seed
        self.requested_port = port
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="worldkit-play-model")
        self.server = None
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def hello(self) -> dict:
        """What the page is told first: the model, the environment, the choices, the starting settings."""
        w, m = self.world, self.world.model
        return {"type": "hello", "weights": w.weights, "env": w.env, "action_dim": int(m.hparams["action_dim"]),
                "frame_size": list(self.episodes.frames.shape[-2:]), "chunk_frames": m.chunk_frames,
                "sampler_steps": w.sampler_steps, "context": self.context, "episodes": len(self.episodes),
                "memories": memory_choices(), "memory": self.memory, "target_fps": self.fps, "out": str(self.out)}

    def state(self) -> dict:
        """``/state.json``: the hello, and the last context frame of the first episode as base64 RGB (the page
        shows it before the game's websocket streams)."""
        from worldkit.frames import tensor_to_frames

        frame = tensor_to_frames(self.episodes.frames[0, self.context - 1])
        return {**self.hello(), "preview": base64.b64encode(frame.tobytes()).decode()}

    def _http(self, connection, request):
        """``process_request``: the page at ``/``, its starting state at ``/state.json``, the websocket at
        ``/ws``, 404 elsewhere."""
        path = request.path.split("?", 1)[0]
        if path == "/ws":  # browsers send their page's origin: only this server's own page plays
            origin = request.headers.get("Origin")
            if origin is not None and origin not in (f"http://{HOST}:{self.port}", f"http://localhost:{self.port}"):
                return connection.respond(403, f"origin {origin} may not play here\n")
            return None
        if path in ("/", "/index.html"):
            body, kind = page(), "text/html; charset=utf-8"
        elif path == "/state.json":
            body, kind = json.dumps(self.state()), "application/json"
        else:
            return connection.respond(404, "not found\n")
        response = connection.respond(200, body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = kind
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _handler(self, ws) -> None:
        loop = asyncio.get_running_loop()
        game = await loop.run_in_executor(self.pool, lambda: Game(self.world, self.episodes, self.seeds, self.memory,
                                                                  self.context, self.seed))
        player = Player(self, ws, game)
        tasks = []
        try:
            await ws.send(json.dumps(self.hello()))
            tasks = [asyncio.ensure_future(player.play()), asyncio.ensure_future(player.listen())]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()
        except Exception as err:
            if not _closed(err):  # the page went away (even before its hello): nothing to say
                raise
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            player.save_now()
            try:
                await loop.run_in_executor(self.pool, game.close)
            except RuntimeError:  # the server is shutting down (its thread pool with it): the process frees it
                pass

    async def start(self) -> None:
        from websockets.asyncio.server import serve

        try:
            self.server = await serve(self._handler, HOST, self.requested_port, process_request=self._http,
                                      compression=None, max_size=2**16)
        except OSError as err:
            why = "in use" if err.errno == errno.EADDRINUSE else err.strerror or str(err)
            raise WorldkitError(f"--port: cannot listen on {HOST}:{self.requested_port} ({why}); pick another "
                                "port, or --port 0 for a free one") from None

    async def run(self, announce: Callable[[str], None] = print) -> None:
        """Serve until cancelled (Ctrl-C)."""
        await self.start()
        announce(f"worldkit play: {self.url}  ({self.world.weights}, env {self.world.env}; Ctrl-C stops)")
        try:
            await self.server.serve_forever()
        finally:
            self.server.close()
            self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- in a thread (tests, the benchmark) -----------------------------------------------------
    def start_thread(self) -> str:
        """Serve from a background thread; returns the page's URL once listening."""
        ready, failed = threading.Event(), []

        def main():
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(self.start())
            except BaseException as err:  # noqa: BLE001 (handed to the caller)
                failed.append(err)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self.server.close()
            self._loop.run_until_complete(self.server.wait_closed())
            self._loop.close()

        self._thread = threading.Thread(target=main, name="worldkit-play-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            raise failed[0]
        return self.url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self.pool.shutdown(wait=True, cancel_futures=True)


def _closed(err: BaseException) -> bool:
    from websockets.exceptions import ConnectionClosed

    return isinstance(err, ConnectionClosed)


# --------------------------------------------------------------------------------------------------
# Loading


def load_world(weights: str, env: Optional[str], memory: str, context: int, episodes: int,
               cache_dir: Optional[str] = None):
    """The world model, its test episodes (the first ``context`` frames of ``episodes`` of them, recorded
    into the data cache) and their seeds, checked against each other; user errors name the option."""
    import worldkit.api as wk

    memory_spec(memory)
    check_env(env)
    if episodes < 1:
        raise WorldkitError(f"--episodes: {episodes}; must be at least 1")
    world = wk.World.load(weights, env=env)
    if env is not None:  # the run's recorded env settings may belong to another env: the env's own defaults then
        try:
            wk_data.resolve_config(world.env, world.env_config)
        except ValueError:
            world.env_config = {"size": world.model.geometry.frame_hw[0]}
    fc = world.model.chunk_frames
    if context < fc or context % fc:
        raise WorldkitError(f"--context: {context} frames; must be a positive multiple of the model's "
                            f"{fc}-frame chunk")
    try:
        eps = world.episodes(episodes, frames=context, cache_dir=cache_dir)
    except (ValueError, TypeError) as err:
        raise WorldkitError(f"--env: {world.env} with {world.env_config}: {err}") from None
    hw, a = tuple(eps.frames.shape[-2:]), eps.actions.shape[-1]
    if hw != tuple(world.model.geometry.frame_hw) or a != world.model.hparams["action_dim"]:
        raise WorldkitError(f"--env: {world.env} gives {hw[0]}x{hw[1]} frames and {a} action dimensions; the "
                            f"weights take {world.model.geometry.frame_hw[0]}x{world.model.geometry.frame_hw[1]} "
                            f"and {world.model.hparams['action_dim']}")
    return world, eps, wk_data.split_seeds("test", episodes)


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
