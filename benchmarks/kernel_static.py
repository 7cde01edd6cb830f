"""Static facts of the PBSA Triton kernels on a CUDA target, from any machine (no GPU needed).

    python benchmarks/kernel_static.py [--arch 90] [--frames 21] [--blocks 128 64] [--density 0.25]
                                       [--kernels fwd dq dkdv] [--defaults] [--num-stages N] [--full-blocks]
                                       [--dtype bf16|fp16|fp32] [--head-dim 128] [--helpers [NAME ...]]
                                       [--json FILE]

Every launch candidate of the forward, dQ and dK/dV kernels (``forward.FWD_CONFIGS``,
``backward.DQ_CONFIGS``, ``backward.DKDV_CONFIGS`` in ``kernels/pbsa_triton/``) is compiled for
``sm_<arch>`` from the very arguments a launch at the kernel benchmark's shapes passes (bf16, 12 heads
x 128, a chunk of 3 x 1560 tokens, ``--frames`` of keys):
the kernels are swapped for stand-ins that record their launch, the PBSA ops run on CPU tensors, and the
recorded arguments are specialised the way Triton's JIT specialises them (ints equal to 1 become
constants, 16-divisible ints and pointers get ``tt.divisibility``). For each compiled candidate:

- registers per thread, spilled bytes and stack frame: the log of Triton's own ``ptxas -v`` call;
- shared memory per program;
- whether its tile loads are software-pipelined: the count of asynchronous tile copies in the TTGIR (K
  and V in the forward and dQ kernels, Q and dO in dK/dV); 0 means every tile load stalls its loop;
- the instructions and block-wide barriers (``BAR.SYNC``) of each of its loops in the SASS, per warp and
  step (with ragged blocks the forward and dQ kernels run full slots in an unmasked loop, then short
  ones in a masked loop): at these tile sizes, by arithmetic from the peak rates, a step's non-matmul
  instructions take about as long to issue as its matmuls;
- resident programs and warps per SM those resources allow, and what limits them.

With ``--helpers`` the small kernels around them (packing the ragged lists; the backward's transposed
lists in two passes; its delta) are compiled too, each in the one configuration it launches with.

These facts explain timings; they are not timings (``kernel_bench.py`` measures those, on a GPU).
Needs the kernels compiled, not interpreted: run it without ``TRITON_INTERPRET=1``. Exits 1 if a
candidate fails to compile.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default Triton applies; set, so it does not warn

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from kernelbench import problem  # noqa: E402  (the kernel benchmark's shapes; kernelbench makes the kernels importable)
from kernelbench.measure import untuned  # noqa: E402

import triton  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from worldkit_kernels.pbsa_triton import backward, forward, lists, op, tuner  # noqa: E402
from worldkit_kernels.pbsa_triton.common import _tile  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
KERNELS = {  # name: (module, its attribute holding the kernel, its attribute holding the candidates)
    "fwd": (forward, "_fwd_kernel", "FWD_CONFIGS"),
    "dq": (backward, "_bwd_dq_kernel", "DQ_CONFIGS"),
    "dkdv": (backward, "_bwd_dkdv_kernel", "DKDV_CONFIGS"),
}
HELPERS = {  # the small kernels around them, one configuration each: name: (module, attribute)
    "pack": (lists, "_pack_kernel"),  # ragged lists packed (forward and backward)
    "mark": (lists, "_mark_kernel"),  # transposed lists, pass 1 (backward)
    "compact": (lists, "_compact_kernel"),  # transposed lists, pass 2 (backward)
    "delta": (backward, "_delta_kernel"),  # rowsum(dout * out) - dlse (backward)
}
# Per-SM limits by compute capability: registers, shared memory (bytes, 1 KiB of it reserved per
# program), resident warps, resident programs (CUDA programming guide, "compute capabilities").
SM_LIMITS = {
    80: dict(regs=65536, smem=167936, warps=64, programs=32),
    86: dict(regs=65536, smem=102400, warps=48, programs=16),
    89: dict(regs=65536, smem=102400, warps=48, programs=24),
    90: dict(regs=65536, smem=233472, warps=64, programs=32),
    100: dict(regs=65536, smem=233472, warps=64, programs=32),
}


class Recorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kwargs)`` records the launch."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def record_launches(BLK: int, frames: int, density: float, configs: dict[str, dict],
                    full_blocks: bool = False, dtype: torch.dtype = torch.bfloat16) -> dict[str, tuple]:
    """The arguments each kernel (and each helper kernel that runs) is launched with at the benchmark's
    shapes, with the given configuration per main kernel: {kernel: (args, kwargs)}. Runs the PBSA forward
    and backward ops on CPU tensors with every kernel replaced by a recorder (nothing is computed).
    full_blocks: no block lengths (every slot full, the unmasked key path; nothing is packed)."""
    p = problem.make_problem(frames, BLK, dtype, "cpu")
    if full_blocks:
        p["block_len"] = None
    index, count, _ = problem.make_lists(1, problem.HEADS, p["NSc"], p["NQB"], density, "cpu")
    q = p["q"]
    lse = torch.zeros(q.shape[:3])
    recorders = {name: Recorder(getattr(mod, attr)) for name, (mod, attr, _) in KERNELS.items()}
    recorders |= {name: Recorder(getattr(mod, attr)) for name, (mod, attr) in HELPERS.items()}
    with contextlib.ExitStack() as stack, torch.no_grad():
        stack.enter_context(untuned())  # one launch per kernel: the first (only) configuration
        for name, (mod, attr) in HELPERS.items():
            stack.enter_context(mock.patch.object(mod, attr, recorders[name]))
        for name, (mod, attr, cfgs) in KERNELS.items():
            stack.enter_context(mock.patch.object(mod, attr, recorders[name]))
            stack.enter_context(mock.patch.object(mod, cfgs, [configs[name]]))
        op.pbsa_fwd(q, p["kp"], p["vp"], index, count, p["block_len"], q.shape[-1] ** -0.5)
        op.pbsa_bwd(torch.zeros_like(q), q, p["kp"], p["vp"], torch.zeros_like(q), lse, torch.zeros_like(lse),
                   index, count, p["block_len"], q.shape[-1] ** -0.5)
    return {name: r.calls[0] for name, r in recorders.items() if r.calls}


def specialise(fn, args: tuple, kwargs: dict) -> ASTSource:
    """The compile source of ``fn`` launched with ``args``/``kwargs``, specialised as Triton's JIT does."""
    from triton._C.libtriton import native_specialize_impl

    signature, constants, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        name = param.name
        if i < len(args):
            ty, key = native_specialize_impl(BaseBackend, args[i], False, True, True)
            signature[name] = ty
            if ty == "constexpr":
                constants[name] = key
            elif key:
                attrs[(i,)] = BaseBackend.parse_attr(key)
        elif param.is_constexpr:
            signature[name] = "constexpr"
            constants[name] = kwargs[name] if name in kwargs else param.default
        else:
            raise TypeError(f"{fn.__name__}: no value for argument {name}")
    return ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)


def compile_facts(fn, args: tuple, kwargs: dict, arch: int = 90) -> dict:
    """Compile one launch for sm_<arch>; its registers, spills, shared memory, pipelined tile loads and
    the occupancy they allow."""
    kwargs = dict(kwargs)
    options = dict(num_warps=kwargs.pop("num_warps"), num_stages=kwargs.pop("num_stages"))
    src = specialise(fn, args, kwargs)
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as cache, _knobs(cache), contextlib.redirect_stdout(log):
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    text = log.getvalue()
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    stack = re.search(r"(\d+) bytes stack frame", text)
    if not (regs and spill):
        raise RuntimeError(f"no ptxas resource report in the compile log:\n{text[-2000:]}")
    ttgir = kernel.asm["ttgir"]
    tile = r"tensor<\d+x\d+x"
    facts = dict(
        regs=int(regs[1]),
        spill=int(spill[1]) + int(spill[2]),
        stack=int(stack[1]) if stack else 0,
        smem=int(kernel.metadata.shared),
        async_tiles=len(re.findall(r"async_copy_global_to_local [^\n]*: " + tile, ttgir))
        + len(re.findall(r"async_tma_copy_global_to_local", ttgir)),
        num_warps=options["num_warps"],
    )
    facts.update(occupancy(facts["regs"], facts["smem"], facts["num_warps"], arch))
    facts.update(sass_loop(kernel.asm["cubin"]))
    return facts


def sass_loop(cubin: bytes) -> dict:
    """Instructions and BAR.SYNC barriers of each loop (a backward branch) in the SASS, in code order;
    loops inside another are counted in it."""
    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout
    ins = [(int(m[1], 16), m[2].strip()) for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    spans = []
    for addr, text in ins:
        m = re.search(r"\bBRA\s+(?:`?\(?[^0-9]*)?0x([0-9a-f]+)", text)
        if m and int(m[1], 16) < addr:
            spans.append((int(m[1], 16), addr))
    outer = [sp for sp in spans if not any(o != sp and o[0] <= sp[0] and sp[1] <= o[1] for o in spans)]
    loops = [[t for a, t in ins if lo <= a <= hi] for lo, hi in sorted(outer)]
    return dict(loop_instructions=[len(body) for body in loops],
                loop_barriers=[sum("BAR.SYNC" in t for t in body) for body in loops])


@contextlib.contextmanager
def _knobs(cache_dir: str):
    """Compile afresh (a cache hit runs no ptxas, so no log) and print ptxas's resource report."""
    from triton import knobs

    saved = (knobs.cache.dir, knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log)
    knobs.cache.dir, knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = cache_dir, True, True
    try:
        yield
    finally:
        knobs.cache.dir, knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved


def occupancy(regs: int, smem: int, num_warps: int, arch: int) -> dict:
    """Programs and warps resident per SM, and the resource that limits them."""
    lim = SM_LIMITS.get(arch) or SM_LIMITS[max(a for a in SM_LIMITS if a <= arch)]
    per_warp = math.ceil(regs * 32 / 256) * 256  # registers are allocated per warp in units of 256
    by = {
        "registers": lim["regs"] // (per_warp * num_warps),
        "shared memory": lim["smem"] // (smem + 1024),
        "warps": lim["warps"] // num_warps,
        "programs": lim["programs"],
    }
    least = min(by.values())
    limit = " and ".join(k for k, v in by.items() if v == least)  # every resource that binds
    return dict(programs_per_sm=least, warps_per_sm=least * num_warps, limit=limit)


def config_text(cfg: dict) -> str:
    short = dict(BLOCK_M="M", BLOCK_N="N", num_warps="w", num_stages="s", SPLIT="split")
    return " ".join(f"{short.get(k, k)}{v}" for k, v in cfg.items())


def compiled_row(BLK: int, name: str, i: int, cfg: dict, fn, launch_args: tuple, launch_kwargs: dict,
                 arch: int) -> dict:
    """One kernel launch compiled: its facts as a row (or the reason it failed), printed as a table line."""
    row = dict(block=BLK, kernel=name, index=i, config=cfg)
    try:
        row.update(compile_facts(fn, launch_args, launch_kwargs, arch))
    except Exception as e:  # e.g. out of shared memory: report and go on
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:80] if str(e).strip() else ''}"
        print(f"| {BLK} | {name} | {i} | {config_text(cfg)} | n/a ({row['error']}) |||||||||", flush=True)
    else:
        print(f"| {BLK} | {name} | {i} | {config_text(cfg)} | {row['regs']} | {row['spill']} "
              f"| {row['smem'] / 1024:.1f} | {row['async_tiles']} | {row['programs_per_sm']} "
              f"| {row['warps_per_sm']} | {row['limit']} | {'/'.join(map(str, row['loop_instructions']))} "
              f"| {'/'.join(map(str, row['loop_barriers']))} |", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    ap.add_argument("--frames", type=int, default=21)
    ap.add_argument("--blocks", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--density", type=float, default=0.25)
    ap.add_argument("--kernels", nargs="*", choices=list(KERNELS), default=list(KERNELS),
                    help="the main kernels to compile (none: only --helpers)")
    ap.add_argument("--defaults", action="store_true", help="only each kernel's default (first) candidate")
    ap.add_argument("--num-stages", type=int, help="compile every candidate with this many pipeline stages instead")
    ap.add_argument("--full-blocks", action="store_true", help="no block lengths: every slot full (unmasked keys)")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--head-dim", type=int, default=problem.HEAD_DIM)
    ap.add_argument("--helpers", nargs="*", choices=list(HELPERS),
                    help="also the small kernels around them (all of them when none is named), as launched")
    ap.add_argument("--json", type=Path, help="also write the rows to this file")
    args = ap.parse_args()
    problem.HEAD_DIM = args.head_dim
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("error: TRITON_INTERPRET=1: the kernels are interpreted, not compiled; unset it", file=sys.stderr)
        return 2
    print(f"triton {triton.__version__}, torch {torch.__version__}; sm_{args.arch}; {args.dtype}, {problem.HEADS} heads x "
          f"{problem.HEAD_DIM}, chunk of {problem.CHUNK_FRAMES} x {problem.TOKENS_PER_FRAME} tokens, "
          f"{args.frames} frames of keys{' (every slot full)' if args.full_blocks else ''}, density {args.density}; "
          "the first candidate of each kernel at each block is its default\n")
    print("| block | kernel | # | configuration | registers | spilled B | shared KiB | pipelined tile copies "
          "| programs/SM | warps/SM | limited by | loop instructions | loop barriers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for BLK in args.blocks:
        tile = _tile(BLK)
        # as a launch orders them: the default (the first made for this tile) first, capped, no duplicates
        defaults = {n: tuner.candidates(getattr(mod, c), tile)[0] for n, (mod, _, c) in KERNELS.items()}
        for name in args.kernels:
            seen = []
            mod, kernel, configs = KERNELS[name]
            candidates = tuner.candidates(getattr(mod, configs), tile)
            for i, cfg in enumerate(candidates[:1] if args.defaults else candidates):
                cfg = dict(cfg)
                if args.num_stages is not None:
                    cfg["num_stages"] = args.num_stages
                if cfg in seen:
                    continue
                seen.append(cfg)
                launch_args, launch_kwargs = record_launches(BLK, args.frames, args.density, {**defaults, name: cfg},
                                                             args.full_blocks, DTYPES[args.dtype])[name]
                rows.append(compiled_row(BLK, name, i, cfg, getattr(mod, kernel), launch_args,
                                         launch_kwargs, args.arch))
        if args.helpers is not None:  # the helper kernels, each in the one configuration it launches with
            launches = record_launches(BLK, args.frames, args.density, defaults, args.full_blocks, DTYPES[args.dtype])
            for name in args.helpers or list(HELPERS):
                if name not in launches:  # e.g. nothing is packed when every slot is full
                    continue
                launch_args, launch_kwargs = launches[name]
                launch_kwargs = {"num_warps": 4, "num_stages": 3, **launch_kwargs}  # Triton's launch defaults
                rows.append(compiled_row(BLK, name, 0, launch_kwargs, getattr(*HELPERS[name]), launch_args,
                                         launch_kwargs, args.arch))
    failed = sum("error" in row for row in rows)
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
