"""worldkit play: the page over HTTP, the game over a websocket (frames, actions, memory switching, the
simulator beside the model, recording), 127.0.0.1 only, and the command's user errors."""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.client import connect

from tests import test_api
from worldkit import cli, play, registry

CONTEXT = 4
tiny_run = test_api.tiny_run  # a run folder: a tiny random model of the pendulum at 16x16, its config.yaml


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return play.load_world(str(tiny_run / "stages" / "0-train" / "model.pt"), None, "sliding_window", CONTEXT, 2,
                           cache_dir=str(tiny_run / "cache"))


@pytest.fixture
def server(loaded, tmp_path):
    """A server at full speed (fps 0) writing recordings into tmp_path/rec."""
    srv = play.PlayServer(*loaded, memory="sliding_window", context=CONTEXT, fps=0, out=str(tmp_path / "rec"), port=0)
    srv.start_thread()
    yield srv
    srv.stop()


class Client:
    """A websocket client that sorts what arrives: model and simulator frames by index, JSON messages."""

    def __init__(self, ws):
        self.ws = ws
        self.hello = json.loads(self.ws.recv(timeout=30))

    def send(self, **message):
        self.ws.send(json.dumps(message))

    def take(self, until, timeout=30.0):
        """Messages (dicts) and frames ((stream, index, array)) until ``until(item)`` is true; all of them."""
        got, end = [], time.monotonic() + timeout
        while True:
            raw = self.ws.recv(timeout=max(0.01, end - time.monotonic()))
            if isinstance(raw, bytes):
                stream, h, w, index = play.FRAME_HEADER.unpack_from(raw)
                item = (stream, index, np.frombuffer(raw[play.FRAME_HEADER.size:], np.uint8).reshape(h, w, 3))
            else:
                item = json.loads(raw)
            got.append(item)
            if until(item):
                return got

    def reply(self, kind, answer=None, **message):
        """Send a command of ``kind`` and wait for the server's answer (of type ``answer``, default ``kind``)."""
        self.send(type=kind, **message)
        return self.take(lambda m: isinstance(m, dict) and m["type"] in (answer or kind, "error"))[-1]

    def drain(self, quiet=0.5):
        """Read until nothing arrives for ``quiet`` seconds (paused: the chunk in flight has been shown)."""
        while True:
            try:
                self.ws.recv(timeout=quiet)
            except TimeoutError:
                return



@contextmanager
def client(srv):
    with connect(f"ws://127.0.0.1:{srv.port}/ws", max_size=2**20) as ws:
        yield Client(ws)


def is_frame(item):
    return isinstance(item, tuple)


def test_page_is_served_self_contained_with_its_controls(server, loaded):
    with urllib.request.urlopen(server.url, timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
        html = r.read().decode()
    for control in ('id="memory"', 'id="simulator"', 'id="record"', 'id="gain"', 'id="model"', 'id="sim"',
                    "ms per frame", "KV cache", "frames per second", "image-rendering: pixelated", "/ws"):
        assert control in html
    assert "<script src" not in html and "<link" not in html and "https://" not in html  # nothing fetched
    with urllib.request.urlopen(server.url + "state.json", timeout=30) as r:  # what the page shows before streaming
        state = json.loads(r.read())
    _, eps, _ = loaded
    assert state["type"] == "hello" and state["memory"] == "sliding_window" and state["context"] == CONTEXT
    preview = np.frombuffer(base64.b64decode(state["preview"]), np.uint8).reshape(16, 16, 3)
    np.testing.assert_array_equal(preview, eps.images()[0, CONTEXT - 1])  # the last context frame
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.url + "nope", timeout=30)
    assert err.value.code == 404


def test_binds_127_0_0_1_only(server):
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    assert [s.getsockname()[0] for s in server.server.sockets] == ["127.0.0.1"]
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # this machine's outward address, if it has one
    try:
        probe.connect(("10.255.255.255", 1))
        outward = probe.getsockname()[0]
    except OSError:
        outward = None
    finally:
        probe.close()
    if outward and not outward.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((outward, server.port), timeout=5).close()
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus, match="403"):  # another site's page in the browser may not play
        connect(f"ws://127.0.0.1:{server.port}/ws", origin="http://example.com").close()
    with connect(f"ws://127.0.0.1:{server.port}/ws", origin=f"http://127.0.0.1:{server.port}") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "hello"  # the page's own origin plays


def test_frames_stream_and_actions_steer_the_model_and_the_simulator(server, loaded):
    world, eps, _ = loaded
    with client(server) as c:
        assert (c.hello["env"], c.hello["action_dim"], c.hello["frame_size"]) == ("pendulum", 1, [16, 16])
        assert c.hello["memories"][:4] == ["dense", "sliding_window", "sink", "persistent_block"]
        got = c.take(lambda m: isinstance(m, dict) and m["type"] == "stats" and m["frame"] >= CONTEXT + 5)
        indices = [i for s, i, _ in filter(is_frame, got) if s == play.MODEL]
        assert indices[:6] == list(range(CONTEXT, CONTEXT + 6))  # frame by frame after the context
        assert c.reply("simulator", on=True) == {"type": "simulator", "on": True}

        def episode_under(action):
            """Pause, restart the episode holding ``action``, play two chunks: the model's and simulator's frames."""
            c.reply("pause", on=True)
            c.drain()
            c.send(type="action", action=[action])
            assert c.reply("restart", episode=0)["episode"] == 0
            c.send(type="pause", on=False)
            got = c.take(lambda m: isinstance(m, dict) and m["type"] == "stats" and m["frame"] >= CONTEXT + 3)
            stats = [m for m in got if isinstance(m, dict) and m["type"] == "stats"]
            assert all(m["action"] == [pytest.approx(action)] and m["simulator"] for m in stats)
            frames = {(s, i): f for s, i, f in filter(is_frame, got)}
            return [np.stack([frames[s, i] for i in range(CONTEXT, CONTEXT + 4)]) for s in (play.MODEL, play.SIMULATOR)]

        left, right, left_again = episode_under(-1.0), episode_under(1.0), episode_under(-1.0)
        np.testing.assert_array_equal(left[0], left_again[0])  # a restart replays the same noise
        np.testing.assert_array_equal(left[1], left_again[1])
        assert not np.array_equal(left[0], right[0])  # the action held changes what the model generates
        assert not np.array_equal(left[1][-1], right[1][-1])  # ... and what the simulator shows
        assert c.reply("action", action=[1, 2])["message"].startswith("action: [1, 2]; give 1 numbers")


def test_simulator_starts_where_the_episode_and_the_actions_left_it(loaded):
    world, eps, seeds = loaded
    game = play.Game(world, eps, seeds, "dense", CONTEXT, episode=1)
    try:
        game.step([0.5])
        game.set_simulator(True)  # brought up after a chunk: replays the context's actions and the chunk's
        fresh = registry.build("env", world.env, eps.env_config)
        fresh.reset(seeds[1])
        for a in eps.actions[1, 1:CONTEXT].numpy():
            fresh.step(a)
        np.testing.assert_array_equal(fresh.render(), eps.images()[1, CONTEXT - 1])  # the replay is the recording
        fresh.step(np.array([0.5]))
        fresh.step(np.array([0.5]))
        np.testing.assert_array_equal(game.simulator_frame(), fresh.render())
        chunk = game.step([-0.5])
        fresh.step(np.array([-0.5]))
        np.testing.assert_array_equal(chunk.simulator[0], fresh.render())
        assert chunk.first == CONTEXT + 2 and chunk.frames.shape == (2, 16, 16, 3)
        fresh.close()
    finally:
        game.close()


def test_memory_policy_switches_while_playing(server):
    with client(server) as c:

        def stats_under(memory, n=5):
            assert c.reply("memory", memory=memory) == {"type": "memory", "memory": memory}
            got = c.take(lambda m: isinstance(m, dict) and m["type"] == "stats" and m["memory"] == memory)
            for _ in range(n - 1):
                got += c.take(lambda m: isinstance(m, dict) and m["type"] == "stats")
            return [m["kv_bytes"] for m in got if isinstance(m, dict) and m["type"] == "stats" and m["memory"] == memory]

        dense = stats_under("dense")
        assert len(dense) == 5 and all(b > a for a, b in zip(dense, dense[1:]))  # dense keeps every chunk
        # the switch recommitted the last CONTEXT frames: the first chunk holds CONTEXT + 2 frames, each chunk 2 more
        per_frame = (dense[1] - dense[0]) // 2
        assert dense[0] == (CONTEXT + 2) * per_frame
        window = stats_under("sliding_window")
        assert window[-1] == window[-2] == 7 * per_frame  # capped: 9 frames with the 2 being generated
        sink = stats_under("persistent_block")
        assert sink[-1] < dense[-1]
        err = c.reply("memory", memory="nope")
        assert err["type"] == "error" and "memory: unknown memory policy 'nope'; choices: dense, sliding_window" in err["message"]


def test_recording_writes_a_gif(server, tmp_path, monkeypatch):
    from PIL import Image

    with client(server) as c:
        assert c.reply("simulator", on=True)["on"] is True
        assert c.reply("record", "recording", on=True) == {"type": "recording", "on": True}
        c.take(lambda m: isinstance(m, dict) and m["type"] == "stats" and m["simulator"])
        c.take(lambda m: isinstance(m, dict) and m["type"] == "stats" and m["frame"] >= CONTEXT + 20)
        c.send(type="record", on=False)
        saved = c.take(lambda m: isinstance(m, dict) and m["type"] == "saved")[-1]
        gif = Path(saved["gif"])
        assert gif.parent == tmp_path / "rec" and gif.suffix == ".gif" and gif.exists()
        with Image.open(gif) as im:
            assert im.n_frames == saved["frames"] >= 10
            assert im.size[0] > 2 * im.size[1] - 40  # the simulator beside the model (16 px frames scaled x8)
        assert (saved["mp4"] is not None) == play_mp4_available()
        if saved["mp4"]:
            assert Path(saved["mp4"]).stat().st_size > 0
        monkeypatch.setattr(play.player, "MAX_RECORDING", 6)  # a recording left running is saved at the limit
        c.send(type="record", on=True)
        capped = c.take(lambda m: isinstance(m, dict) and m["type"] == "saved")[-1]
        assert capped["frames"] == 6 and Path(capped["gif"]).exists() and capped["gif"] != saved["gif"]


def play_mp4_available():
    from worldkit.animation import mp4_encoder_installed

    return mp4_encoder_installed()


def test_frames_are_paced_to_the_target_rate(loaded, tmp_path):
    srv = play.PlayServer(*loaded, context=CONTEXT, fps=20, out=str(tmp_path), port=0)
    srv.start_thread()
    try:
        with client(srv) as c:
            c.take(lambda m: is_frame(m) and m[1] >= CONTEXT + 4)  # warmed up
            t0 = time.monotonic()
            got = c.take(lambda m: is_frame(m) and m[1] >= CONTEXT + 34)
            rate = sum(1 for m in got if is_frame(m) and m[0] == play.MODEL) / (time.monotonic() - t0)
            assert 10 < rate < 24  # never faster than asked
    finally:
        srv.stop()


def test_bad_memory_env_context_and_port_exit_2_naming_the_option(tiny_run, capsys, monkeypatch):
    monkeypatch.setenv("WORLDKIT_CACHE", str(tiny_run / "cache"))
    weights = str(tiny_run / "stages" / "0-train" / "model.pt")
    assert cli.main(["play", weights, "--memory", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --memory: unknown memory policy 'nope'; choices: dense, sliding_window, sink, persistent_block" \
        + "".join(f", {n}" for n in play.memory_choices()[4:]) + "\n"
    assert cli.main(["play", weights, "--env", "pendulm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --env: unknown env plugin 'pendulm' (did you mean 'pendulum'?); choices: ")
    assert "revisit_room" in err and len(err.splitlines()) == 1
    assert cli.main(["play", weights, "--context", "3"]) == 2
    assert "error: --context: 3 frames; must be a positive multiple of the model's 2-frame chunk" in capsys.readouterr().err
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        assert cli.main(["play", weights, "--port", str(port)]) == 2
    finally:
        taken.close()
    assert capsys.readouterr().err.splitlines()[-1] == (f"error: --port: cannot listen on 127.0.0.1:{port} (in use); "
                                                       "pick another port, or --port 0 for a free one")


def test_the_command_prints_its_url_and_serves_the_page(tiny_run, tmp_path):
    env = {**os.environ, "WORLDKIT_CACHE": str(tiny_run / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "worldkit", "play", str(tiny_run / "stages" / "0-train" / "model.pt"),
                             "--port", "0", "--out", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert line.startswith("worldkit play: http://127.0.0.1:"), (line, proc.stderr.read() if not line else "")
        url = line.split()[2]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert 'id="memory"' in r.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert proc.returncode == 130


def test_fps_benchmark_script_prints_its_figures(tiny_run, capsys):
    from tests.benchmark_scripts import load

    r = load("play_fps").main(["--weights", str(tiny_run / "stages" / "0-train" / "model.pt"), "--seconds", "1",
                               "--warmup", "0.5", "--fps", "30", "--context", "4", "--simulator",
                               "--cache-dir", str(tiny_run / "cache")])
    out = capsys.readouterr().out
    assert 10 < r["fps"] < 36 and r["kv_bytes"] > 0 and r["simulator_ms"] > 0
    assert f"frames/s received: {r['fps']:.1f}" in out and "ms per chunk (model): mean" in out


def test_a_page_that_leaves_at_once_is_no_error(server, caplog):
    for _ in range(3):  # gone before its hello (headless browsers on a time budget do this)
        with connect(f"ws://127.0.0.1:{server.port}/ws"):
            pass
    with client(server) as c:  # the server plays on
        assert c.take(lambda m: is_frame(m))[-1][1] == CONTEXT
    time.sleep(0.5)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_the_page_ships_with_the_package():
    """The page is a file in the play package: the wheel must carry it (package data), or / serves nothing."""
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    from worldkit import play

    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["worldkit.play"]
    assert play.PAGE_FILE.name in data and play.PAGE_FILE.parent == Path(play.__file__).parent
    assert play.page().lstrip().startswith("<!doctype html>") and "</html>" in play.page()
