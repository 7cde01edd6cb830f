"""The server of ``worldkit play``: one asyncio server (the ``websockets`` package) on 127.0.0.1 that
answers ``GET /`` with the page (``page.html``, one self-contained file), ``/state.json`` with what the page
shows before the game streams and ``/ws`` with the game's websocket (refused to pages of another origin).
Each connection plays its own game (``player.Player``); every model and simulator call runs on one worker
thread, so the event loop stays responsive and MuJoCo's GL context stays on the thread that made it."""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import errno
import json
import threading
from pathlib import Path
from typing import Callable, Optional

from worldkit.errors import WorldkitError
from worldkit.play.game import Game, memory_choices, memory_spec
from worldkit.play.player import Player

HOST = "127.0.0.1"  # never another interface: the page drives a process on this machine
DEFAULT_PORT = 8765
DEFAULT_FPS = 25.0
DEFAULT_OUT = "play_recordings"

PAGE_FILE = Path(__file__).with_name("page.html")  # the page: inline HTML, CSS and JavaScript, no CDN


def page() -> str:
    """The page served at ``/`` (read from ``page.html``, shipped with the package)."""
    return PAGE_FILE.read_text(encoding="utf-8")


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
