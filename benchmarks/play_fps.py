"""Frames per second of ``worldkit play``, measured as the page sees them.

    OMP_NUM_THREADS=1 python benchmarks/play_fps.py [--seconds 20] [--fps 25] [--memory sliding_window]
                                                    [--simulator] [--weights base/revisit_room]

Starts the play server in this process on a free port of 127.0.0.1 (the model on its worker thread, as
``worldkit play`` runs it), connects a websocket client, holds a turning action (its sign flips every
second) and counts the model frames that arrive for ``--seconds`` after a warm-up. Prints the frames per
second received, the server's ms per chunk (model time: denoising and commit) and per frame, the
simulator's ms per chunk when it is on, and the KV-cache bytes held. ``--fps 0`` plays as fast as the model
generates (the headroom above the page's default of 25).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from worldkit import play


def measure(server: play.PlayServer, seconds: float, warmup: float = 2.0, simulator: bool = False) -> dict:
    """Play ``server`` through a websocket client: frames per second received and the server's stats."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server.port}/ws", max_size=2**22) as ws:
        hello = json.loads(ws.recv(timeout=60))
        if simulator:
            ws.send(json.dumps({"type": "simulator", "on": True}))
        start = time.perf_counter()
        counting, frames, stats, sign, flipped = None, 0, [], 1.0, start
        while True:
            now = time.perf_counter()
            if now - flipped >= 1.0:  # turn one way, then the other
                sign, flipped = -sign, now
                ws.send(json.dumps({"type": "action", "action": [0.5 * sign] * hello["action_dim"]}))
            if counting is None and now - start >= warmup:
                counting, frames, stats = now, 0, []
            if counting is not None and now - counting >= seconds:
                break
            raw = ws.recv(timeout=60)
            if isinstance(raw, bytes):
                frames += raw[0] == play.MODEL
            else:
                message = json.loads(raw)
                if message["type"] == "stats":
                    stats.append(message)
        elapsed = time.perf_counter() - counting
    chunks = [m["ms_per_chunk"] for m in stats]
    return {"hello": hello, "frames": frames, "seconds": elapsed, "fps": frames / elapsed,
            "ms_per_chunk": statistics.mean(chunks), "ms_per_chunk_median": statistics.median(chunks),
            "ms_per_frame": statistics.mean(m["ms_per_frame"] for m in stats),
            "simulator_ms": statistics.mean(m["simulator_ms"] for m in stats),
            "kv_bytes": stats[-1]["kv_bytes"], "chunks": len(stats)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="base/revisit_room")
    ap.add_argument("--env", default=None)
    ap.add_argument("--memory", default="sliding_window")
    ap.add_argument("--fps", type=float, default=play.DEFAULT_FPS, help="the server's target (0: unpaced)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--context", type=int, default=10)
    ap.add_argument("--simulator", action="store_true", help="step the true environment beside the model")
    ap.add_argument("--cache-dir", default=None, help="data cache for the test episodes (default: worldkit's)")
    args = ap.parse_args(argv)
    world, eps, seeds = play.load_world(args.weights, args.env, args.memory, args.context, 1, cache_dir=args.cache_dir)
    server = play.PlayServer(world, eps, seeds, memory=args.memory, context=args.context, fps=args.fps, port=0)
    server.start_thread()
    try:
        r = measure(server, args.seconds, args.warmup, args.simulator)
    finally:
        server.stop()
    h = r["hello"]
    print(f"worldkit play: {args.weights} ({h['env']}, {h['frame_size'][0]}x{h['frame_size'][1]} frames, "
          f"{h['chunk_frames']}-frame chunks, {h['sampler_steps']} denoising steps), memory {args.memory}, "
          f"target {args.fps:g} fps{' (unpaced)' if not args.fps else ''}, simulator {'on' if args.simulator else 'off'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"frames/s received: {r['fps']:.1f} ({r['frames']} frames in {r['seconds']:.1f} s)")
    print(f"ms per chunk (model): mean {r['ms_per_chunk']:.1f}, median {r['ms_per_chunk_median']:.1f} "
          f"({r['chunks']} chunks); ms per frame {r['ms_per_frame']:.1f}"
          + (f"; simulator {r['simulator_ms']:.1f} ms per chunk" if args.simulator else ""))
    print(f"KV cache held: {r['kv_bytes'] / 1024:.1f} KiB")
    return r


if __name__ == "__main__":
    main()
