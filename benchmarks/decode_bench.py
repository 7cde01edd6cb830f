"""Decode speed and KV memory of memory policies, side by side, at growing horizons.

For each horizon h (a multiple of the training clip) and each variant, the cache is first brought to
the state it has after h x clip frames (random clean K/V committed through the policy itself, so
evictions and persistent-memory updates run as in a rollout), then ``--reps`` chunks are generated
with the model and timed: denoise, commit, total (median). Speed does not depend on the weights, so the
model has random weights at realistic shapes (DESIGN.md "CPU speed bench" by default); quality is
measured on the trained small models by ``worldkit run`` (see the main job's report).

    python benchmarks/decode_bench.py                       # CPU speed-bench shapes
    python benchmarks/decode_bench.py --preset gpu --device cuda
    python benchmarks/decode_bench.py --write               # also append the table to RESULTS.md
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from worldkit.model import WorldModel
from worldkit.rollout import Rollout
from worldkit.training import build_plugin

PRESETS = {  # DESIGN.md "Sizes"
    "cpu": dict(frame_size=64, patch=4, block_patches=4, chunk_frames=2, clip=16, layers=6, width=256, heads=8),
    "cpu_quality": dict(frame_size=32, patch=8, block_patches=2, chunk_frames=2, clip=16, layers=4, width=128, heads=4),
    "gpu": dict(frame_size=64, patch=2, block_patches=8, chunk_frames=3, clip=21, layers=12, width=512, heads=8),
}


def variants(clip: int) -> dict[str, tuple[dict, dict, dict]]:
    """name -> (memory, selector, attention) specs. The baseline is Self-Forcing's rolling window over
    the training clip; Sparse Forcing keeps 1 sink frame, 2 frames' worth of persistent blocks and a
    6-frame local window read at 25 % block density."""
    sdpa, every = {"type": "sdpa"}, {"type": "all"}
    return {
        "dense": ({"type": "dense"}, every, sdpa),
        "sliding_window": ({"type": "sliding_window", "window_frames": clip}, every, sdpa),
        "sink": ({"type": "sink", "sink_frames": 1, "window_frames": clip - 1}, every, sdpa),
        "sparse_forcing": (
            {"type": "persistent_block", "sink_frames": 1, "persistent_frames": 2, "window_frames": 6},
            {"type": "local_window", "top_k": 0.25},
            {"type": "pbsa"},
        ),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def prefill(rollout: Rollout, frames: int, generator: torch.Generator) -> None:
    """Commit ``frames`` frames of random clean K/V through the policy (no model passes)."""
    m, mem = rollout.model, rollout.memory
    spec = mem.spec
    tc = m.chunk_frames * m.geometry.tokens_per_frame
    nqb = tc // spec.block_tokens
    for _ in range(frames // m.chunk_frames):
        kv = torch.randn(2, spec.layers, spec.batch, spec.heads, tc, spec.head_dim, generator=generator)
        pq = torch.randn(spec.layers, spec.batch, spec.heads, nqb, spec.head_dim, generator=generator)
        mem.commit(kv[0].to(spec.device, spec.dtype), kv[1].to(spec.device, spec.dtype), pq.to(spec.device, spec.dtype))


def measure(model, variant, horizon_frames, reps, device, dtype, clip) -> dict:
    mem, sel, att = variant
    r = Rollout(model, build_plugin("memory", mem), build_plugin("selector", sel), build_plugin("attention", att),
                steps=4, train_frames=clip)
    g = torch.Generator().manual_seed(0)
    r.reset(1, dtype=dtype, device=device)
    prefill(r, horizon_frames - model.chunk_frames * (reps + 1), g)
    actions = torch.zeros(1, model.chunk_frames, model.hparams["action_dim"], device=device, dtype=dtype)
    with torch.no_grad():
        r.chunk(actions, generator=g)  # warm-up
        r.timings.clear()
        for _ in range(reps):
            r.chunk(actions, generator=g)
    t = r.timings
    return {
        "denoise": statistics.median(x.denoise_ms for x in t),
        "commit": statistics.median(x.commit_ms for x in t),
        "total": statistics.median(x.total_ms for x in t),
        "kv_mib": max(x.kv_bytes for x in t) / 2**20,
    }


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 4, 12, 48], help="multiples of the training clip")
    p.add_argument("--reps", type=int, default=3, help="timed chunks per cell (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--variants", nargs="+", default=None, help="subset of variants to run")
    p.add_argument("--skip", nargs="*", default=["dense@48"], help="cells to skip, as VARIANT@HORIZON")
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    pr = PRESETS[args.preset]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = WorldModel(frame_size=pr["frame_size"], action_dim=2, patch=pr["patch"], width=pr["width"],
                       layers=pr["layers"], heads=pr["heads"], block_patches=pr["block_patches"],
                       chunk_frames=pr["chunk_frames"]).to(device, dtype).eval()
    vs = variants(pr["clip"])
    names = args.variants or list(vs)
    rows = {}
    for h in args.horizons:
        for name in names:
            if f"{name}@{h}" in args.skip:
                continue
            t0 = time.perf_counter()
            rows[name, h] = measure(model, vs[name], h * pr["clip"], args.reps, device, dtype, pr["clip"])
            print(f"  {name:>15} @ {h:>2}x: {rows[name, h]['total']:8.1f} ms/chunk  ({time.perf_counter() - t0:.0f} s)", flush=True)
    geo = model.geometry
    lines = [
        f"### decode_bench --preset {args.preset} ({args.device}, {args.dtype})",
        "",
        f"Random weights: {pr['layers']} layers x {pr['width']}, {pr['heads']} heads, {geo.tokens_per_frame} tokens/frame, "
        f"{geo.block_tokens}-token blocks, {pr['chunk_frames']}-frame chunks, 4 denoising steps + 1 commit pass, "
        f"training clip {pr['clip']} frames; batch 1; median of {args.reps} chunks. "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else "") + ".",
        "",
        "| variant | horizon | denoise ms | commit ms | total ms | KV MiB | total vs sliding_window | KV vs sliding_window |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (name, h), r in rows.items():
        base = rows.get(("sliding_window", h))
        rt = f"{r['total'] / base['total']:.2f}x" if base else "-"
        rk = f"{r['kv_mib'] / base['kv_mib']:.2f}x" if base and base["kv_mib"] else "-"
        lines.append(f"| {name} | {h}x | {r['denoise']:.1f} | {r['commit']:.1f} | {r['total']:.1f} | {r['kv_mib']:.2f} | {rt} | {rk} |")
    skipped = [s for s in args.skip if s.split("@")[0] in names and int(s.split("@")[1]) in args.horizons]
    if skipped:
        lines += ["", f"Skipped (too slow to be worth the wait here): {', '.join(skipped)}."]
    table = "\n".join(lines)
    print(table)
    if args.write:
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write("\n" + table + "\n")
    return table


if __name__ == "__main__":
    main()
