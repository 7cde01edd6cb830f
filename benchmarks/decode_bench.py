"""Decode speed and KV memory of memory policies, side by side, at growing horizons.

For each horizon h (a multiple of the training clip) and each variant, the cache is brought to the state
it has ``--reps`` chunks before h x clip frames (random clean K/V committed through the policy itself, so
evictions and persistent-memory updates run as in a rollout), then the last ``--reps`` chunks of the
horizon are generated with the model, twice from that same state: a rehearsal that pays every first-call
cost on the very shapes the timed chunks meet (Triton compiles and launch tuning, the selection's
``auto`` timings, cuDNN's plans), then the timed pass. Each chunk's time is split into block selection
(``selector.select``), attention (``backend.attend``), both over every layer of the denoising passes and
the commit pass, and the rest (CUDA events around each call on a GPU, so nothing waits inside a chunk);
the row is the chunk of median total. Speed does not depend on the weights, so the model has random
weights at realistic shapes; quality is measured on the trained small models by ``worldkit run``.

    python benchmarks/decode_bench.py                       # CPU speed-bench shapes
    python benchmarks/decode_bench.py --preset wan --device cuda --dtype bfloat16 --horizons 1 4 12 --sdpa cudnn
    python benchmarks/decode_bench.py --out decode.md --profile   # the table in a file; where one chunk's time goes
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from worldkit.interfaces import MODEL_KINDS  # noqa: E402
from worldkit.model import WorldModel  # noqa: E402
from worldkit.rollout import Rollout  # noqa: E402
from worldkit import registry  # noqa: E402

PRESETS = {  # docs/design.md "Sizes"; frame_size in pixels and block_patches in patches: a side or (rows, cols)
    "cpu": dict(frame_size=64, patch=4, block_patches=4, chunk_frames=2, clip=16, layers=6, width=256, heads=8),
    "cpu_quality": dict(frame_size=32, patch=8, block_patches=2, chunk_frames=2, clip=16, layers=4, width=128, heads=4),
    "gpu": dict(frame_size=64, patch=2, block_patches=8, chunk_frames=3, clip=21, layers=12, width=512, heads=8),
    # Wan2.1-1.3B: a 480 x 832 video is a 60 x 104 latent of 16 channels, 2 x 2 patches: 30 x 52 = 1560
    # tokens a frame. No tiling of 30 x 52 makes 128-token blocks; 30 x 4 strips make 120 (13 a frame;
    # the kernels pad a block to 128 rows), where 10 x 13 tiles (130) would pad to 256.
    "wan": dict(frame_size=(60, 104), channels=16, patch=2, block_patches=(30, 4), chunk_frames=3, clip=21,
                layers=30, width=1536, heads=12),
    # the same code paths at toy sizes (the CPU test): non-square frames and blocks, head dim 16
    "tiny": dict(frame_size=(4, 8), channels=3, patch=2, block_patches=(2, 1), chunk_frames=1, clip=12,
                 layers=1, width=16, heads=1),
}
TARGETS = {1: 1.15, 12: 1.3}  # Sparse Forcing's speed against the sliding window, per horizon (issue 23)
KV_TARGET = 0.55  # ... and its KV bytes against the window's


def variants(clip: int, impl: str = "auto") -> dict[str, tuple[dict, dict, dict]]:
    """name -> (memory, selector, attention) specs, in the order they run at each horizon (dense, the
    slowest, last: a time limit cuts it first). The baseline is Self-Forcing's rolling window over the
    training clip; Sparse Forcing keeps 1 sink frame, 2 frames' worth of persistent blocks and a 6-frame
    local window read at 25 % block density (``impl``: its selection's and PBSA's)."""
    sdpa, every = {"type": "sdpa"}, {"type": "all"}
    return {
        "sliding_window": ({"type": "sliding_window", "window_frames": clip}, every, sdpa),
        "sparse_forcing": (
            {"type": "persistent_block", "sink_frames": 1, "persistent_frames": 2, "window_frames": 6},
            {"type": "local_window", "top_k": 0.25, "impl": impl},
            {"type": "pbsa", "impl": impl},
        ),
        "sink": ({"type": "sink", "sink_frames": 1, "window_frames": clip - 1}, every, sdpa),
        "dense": ({"type": "dense"}, every, sdpa),
    }


class SplitTimer:
    """Time spent inside wrapped calls, by name: CUDA events around each call on a GPU (nothing waits
    inside a chunk), the wall clock on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.spans = defaultdict(list)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn(*args, **kwargs)
                end.record()
                self.spans[name].append((start, end))
            else:
                t0 = time.perf_counter()
                out = fn(*args, **kwargs)
                self.spans[name].append(time.perf_counter() - t0)
            return out

        return timed

    def take(self, name: str) -> float:
        """ms spent in ``name`` since the last take; the device work must have finished (``Rollout.chunk``
        waits for it before it returns)."""
        spans = self.spans.pop(name, [])
        return sum(s.elapsed_time(e) for s, e in spans) if self.cuda else 1e3 * sum(spans)


def sdpa_backends(name: str):
    """The SDPA backends the dense variants run with, in priority order ("default": torch's choice)."""
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend as B
    from torch.nn.attention import sdpa_kernel

    order = {"cudnn": [B.CUDNN_ATTENTION, B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH],
             "flash": [B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH]}[name]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # a torch without priorities: the listed backends, in torch's own order
        return sdpa_kernel(order)


@torch.no_grad()
def prefill(rollout: Rollout, frames: int, generator: torch.Generator) -> None:
    """Commit ``frames`` frames of random clean K/V through the policy (no model passes), drawn on the
    cache's device."""
    m, mem = rollout.model, rollout.memory
    spec = mem.spec
    tc = m.chunk_frames * m.geometry.tokens_per_frame
    nqb = tc // spec.block_tokens
    draw = dict(generator=generator, device=spec.device, dtype=spec.dtype)
    for _ in range(frames // m.chunk_frames):
        kv = torch.randn(2, spec.layers, spec.batch, spec.heads, tc, spec.head_dim, **draw)
        mem.commit(kv[0], kv[1], torch.randn(spec.layers, spec.batch, spec.heads, nqb, spec.head_dim, **draw))


def measure(model, variant, horizon_frames, reps, device, dtype, clip, profile=False) -> dict:
    """The last ``reps`` chunks of a ``horizon_frames`` rollout, rehearsed then timed (see the module's
    docstring): the median chunk's total, selection and attention ms, the KV bytes held, the peak memory
    allocated, and with ``profile`` where one more chunk spends its time."""
    fc = model.chunk_frames
    start = horizon_frames - fc * reps
    if start < 0:
        raise ValueError(f"{reps} chunks of {fc} frames do not fit in a horizon of {horizon_frames} frames")
    actions = torch.zeros(1, fc, model.hparams["action_dim"], device=device, dtype=dtype)
    timer = SplitTimer(device)
    for timed in (False, True):
        r = mem = sel = att = None  # the rehearsal's cache goes before the timed pass makes its own
        gc.collect()
        mem, sel, att = (registry.build(kind, spec) for kind, spec in zip(MODEL_KINDS, variant))
        # an unbounded pool (dense) made at its final size, + the profiled chunk: grown by doubling, as in
        # a rollout, dense at 12x the Wan clip would hold 192 frames' slots beside 384 while copying
        mem.reserve_slots = (horizon_frames + fc) * model.geometry.blocks_per_frame
        sel.select = timer.wrap("selection", sel.select)  # these instances only: normal runs pay nothing
        att.attend = timer.wrap("attention", att.attend)
        r = Rollout(model, mem, sel, att, steps=4, train_frames=clip)
        g = torch.Generator(device=device).manual_seed(0)
        r.reset(1, dtype=dtype, device=device)
        prefill(r, start, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        chunks = []
        with torch.no_grad():
            for _ in range(reps):
                r.chunk(actions, generator=g)
                t = r.timings[-1]
                chunks.append(dict(total=t.total_ms, selection=timer.take("selection"),
                                   attention=timer.take("attention"), kv_bytes=t.kv_bytes))
    out = sorted(chunks, key=lambda c: c["total"])[len(chunks) // 2]
    out["kv_bytes"] = max(c["kv_bytes"] for c in chunks)
    out["peak_bytes"] = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    out["totals"] = [round(c["total"], 1) for c in chunks]
    if profile:
        out["profile"] = profile_chunk(r, actions, g, out["total"])
    return out


def profile_chunk(r: Rollout, actions, generator, median_ms: float, top: int = 12) -> str:
    """One more chunk under torch.profiler: its kernels by device time (CPU operators by self time on
    the CPU), slowest first, and the device's busy time against the timed chunk's median: a busy time
    well under the median means the host, launching kernels, sets the pace."""
    from torch.profiler import ProfilerActivity, profile

    cuda = r.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        with torch.no_grad():
            r.chunk(actions, generator=generator)
    if cuda:
        key = lambda e: e.device_time_total  # noqa: E731
        events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA and key(e) > 0]
    else:
        key = lambda e: e.self_cpu_time_total  # noqa: E731
        events = [e for e in prof.key_averages() if key(e) > 0]
    events.sort(key=key, reverse=True)
    busy = sum(key(e) for e in events) / 1e3
    lines = [f"| {'kernel (device time)' if cuda else 'operator (CPU self time)'} | calls | ms per chunk | share |",
             "|---|---|---|---|"]
    for e in events[:top]:
        name = e.key.replace("|", "/")[:90]
        lines.append(f"| `{name}` | {e.count} | {key(e) / 1e3:.2f} | {key(e) / 1e3 / max(busy, 1e-9):.0%} |")
    lines.append(f"| all ({len(events)} kinds) | {sum(e.count for e in events)} | {busy:.2f} | 100% |")
    lines.append("")
    lines.append(f"{'Device' if cuda else 'CPU'} busy {busy:.1f} ms in a chunk whose timed median is {median_ms:.1f} ms "
                 f"({busy / max(median_ms, 1e-9):.0%}); the profiled chunk took {r.timings[-1].total_ms:.1f} ms "
                 "with the profiler on.")
    return "\n".join(lines)


def fmt_bytes(b) -> str:
    if b is None:
        return "-"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.2f} MiB"


def target(h: int, speed: float | None, kv: float | None) -> str:
    """The issue's targets for Sparse Forcing at horizon ``h``, met or not."""
    out = []
    if h in TARGETS and speed is not None:
        out.append(f"speed >= {TARGETS[h]}x: {'met' if speed >= TARGETS[h] else 'MISSED'}")
    if kv is not None:
        out.append(f"KV <= {KV_TARGET}x: {'met' if kv <= KV_TARGET else 'MISSED'}")
    return "; ".join(out) or "-"


def render(args, pr, geo, rows, header) -> str:
    """The markdown: header, the table (ratios against the sliding window of the same horizon), notes."""
    lines = header + [
        "",
        "| variant | horizon | ms / chunk | selection ms | attention ms | rest ms | KV held | peak allocated "
        "| speed vs sliding_window | KV vs sliding_window | targets |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, h), r in rows.items():
        if isinstance(r, str):
            lines.append(f"| {name} | {h}x | {r} |  |  |  |  |  |  |  |  |")
            continue
        base = rows.get(("sliding_window", h))
        base = base if isinstance(base, dict) else None
        speed = base["total"] / r["total"] if base else None
        kv = r["kv_bytes"] / base["kv_bytes"] if base and base["kv_bytes"] else None
        rest = r["total"] - r["selection"] - r["attention"]
        lines.append(
            f"| {name} | {h}x | {r['total']:.1f} | {r['selection']:.1f} | {r['attention']:.1f} | {rest:.1f} "
            f"| {fmt_bytes(r['kv_bytes'])} | {fmt_bytes(r['peak_bytes'])} "
            f"| {'-' if speed is None else f'{speed:.2f}x'} | {'-' if kv is None else f'{kv:.2f}x'} "
            f"| {target(h, speed, kv) if name == 'sparse_forcing' else ''} |"
        )
    lines += ["", "Timed chunks (ms, in order), per cell: " + "; ".join(
        f"{n}@{h}x {r['totals']}" for (n, h), r in rows.items() if isinstance(r, dict)) + "."]
    skipped = [s for s in args.skip if s.split("@")[0] in args.variants and int(s.split("@")[1]) in args.horizons]
    if skipped:
        lines += ["", f"Skipped: {', '.join(skipped)}."]
    from worldkit_kernels.choices import kernel_choices

    chosen = kernel_choices()
    if chosen["selection"]:
        lines += ["", "Block selection (`local_window`, `impl: auto` picks per problem class; ms per call):", ""]
        lines += [f"- {e['class']}: " + ", ".join(f"{k} {v}" for k, v in e["timings_ms"].items()) + f"; keeps {e['kept']}"
                  + (f" ({e['kernel_failed']})" if "kernel_failed" in e else "") for e in chosen["selection"]]
    if chosen["pbsa"]:
        lines += ["", "PBSA launch configurations (Triton; per problem class):", ""]
        lines += [f"- {e['class']}: {e['kept']}{' (tuned)' if e['tuned'] else ''}" for e in chosen["pbsa"]]
    for (name, h), r in rows.items():
        if isinstance(r, dict) and "profile" in r:
            lines += ["", f"Where one more chunk of {name} at {h}x spends its time (torch.profiler):", "", r["profile"]]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 4, 12, 48], help="multiples of the training clip")
    p.add_argument("--reps", type=int, default=3, help="timed chunks per cell (median)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--variants", nargs="+", default=None, help="subset of variants to run")
    p.add_argument("--skip", nargs="*", default=["dense@48"], help="cells to skip, as VARIANT@HORIZON")
    p.add_argument("--impl", choices=["auto", "torch", "triton"], default="auto",
                   help="Sparse Forcing's block selection and PBSA (auto: Triton PBSA on CUDA, the selection "
                        "auto picks per problem class)")
    p.add_argument("--sdpa", choices=["default", "cudnn", "flash"], default="default",
                   help="SDPA backends first in line for every variant (the dense ones use SDPA)")
    p.add_argument("--profile", nargs="*", default=None, metavar="VARIANT@HORIZON",
                   help="profile one more chunk of these cells (no value: sliding_window and sparse_forcing "
                        "at the last horizon)")
    p.add_argument("--out", type=Path, help="write the markdown here (rewritten after every cell)")
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    return p


def main(argv=None) -> str:
    args = parser().parse_args(argv)
    pr = PRESETS[args.preset]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    vs = variants(pr["clip"], args.impl)
    args.variants = args.variants or list(vs)
    profiled = set(args.profile or [f"{v}@{args.horizons[-1]}" for v in ("sliding_window", "sparse_forcing")]) \
        if args.profile is not None else set()
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):  # weights made where they run (1.3 B parameters at the wan preset)
        model = WorldModel(frame_size=pr["frame_size"], action_dim=2, patch=pr["patch"], width=pr["width"],
                           layers=pr["layers"], heads=pr["heads"], block_patches=pr["block_patches"],
                           chunk_frames=pr["chunk_frames"], channels=pr.get("channels", 3))
    model = model.to(dtype).eval()
    geo = model.geometry
    (gh, gw), (bh, bw) = geo.grid_hw, geo.block_hw
    cmd = " ".join(["python benchmarks/decode_bench.py"] + list(sys.argv[1:] if argv is None else argv))
    header = [
        f"### Decode speed and KV memory, {datetime.date.today()}: `{cmd}`",
        "",
        describe(device) + ".",
        "",
        f"Random weights: {pr['layers']} layers x {pr['width']}, {pr['heads']} heads x {model.head_dim}; frames of "
        f"{gh} x {gw} patches = {geo.tokens_per_frame} tokens, {pr.get('channels', 3)} channels; blocks of {bh} x {bw} "
        f"patches = {geo.block_tokens} tokens ({geo.blocks_per_frame} a frame); {pr['chunk_frames']}-frame chunks, "
        f"4 denoising steps + 1 commit pass; training clip {pr['clip']} frames; {args.dtype}, batch 1. Each cell: "
        f"the last {args.reps} chunks of the horizon, rehearsed once from the same cache state, then timed; the "
        "chunk of median total. selection = the selector's `select`, attention = the backend's `attend` (all "
        "layers, denoising and commit passes; on a GPU, CUDA events around each call), rest = total - both: "
        "the linear layers, norms, RoPE (the cached keys rotated at every read), pooling, and the commit "
        "(persistent-block scoring included). KV held: the cache's K and V bytes in use after a commit "
        "(`memory.nbytes`); peak allocated: `torch.cuda.max_memory_allocated` over the timed chunks (weights, "
        "activations and the whole pool included; dense's pool is sized once for the horizon). "
        f"SDPA backends: {args.sdpa}; Sparse Forcing: `local_window` + `pbsa` with impl {args.impl}. No CUDA "
        "graphs or torch.compile for any variant. Targets (issue 23): Sparse Forcing >= 1.15x the sliding "
        "window's speed at 1x and >= 1.3x at 12x, KV <= 0.55x.",
    ]
    rows = {}

    def flush() -> str:
        md = render(args, pr, geo, rows, header)
        if args.out:
            args.out.write_text(md + "\n")
        return md

    with sdpa_backends(args.sdpa):
        for h in args.horizons:
            for name in args.variants:
                cell = f"{name}@{h}"
                if cell in args.skip:
                    continue
                t0 = time.perf_counter()
                try:
                    rows[name, h] = measure(model, vs[name], h * pr["clip"], args.reps, device, dtype, pr["clip"],
                                            profile=cell in profiled)
                    msg = f"{rows[name, h]['total']:8.1f} ms/chunk"
                except torch.cuda.OutOfMemoryError:
                    rows[name, h] = msg = "out of memory"
                except Exception as e:  # one failing cell must not end the table
                    traceback.print_exc()
                    rows[name, h] = msg = f"failed: {type(e).__name__}: {' '.join(str(e).split())[:150]}"
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(f"  {name:>15} @ {h:>2}x: {msg}  ({time.perf_counter() - t0:.0f} s)", flush=True)
                flush()
    md = flush()
    print(md)
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.write:
        with open(Path(__file__).parent / "RESULTS.md", "a") as f:
            f.write("\n" + md + "\n")
    return md


if __name__ == "__main__":
    main()
