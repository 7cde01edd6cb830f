"""Where PBSA's time goes: kernel by kernel (torch.profiler; ``profile``, ``profile_selection``) and the
CPU time to issue a call against its full time (``launch_cost``)."""
from __future__ import annotations

import time

import torch

from worldkit_kernels import pbsa_attention, pool_blocks

from . import problem
from .problem import make_lists, make_problem

LAUNCH_COST_CALLS, PROFILE_STEPS = 50, 5  # calls per pass in launch_cost, steps profiled


def profile_table(step, steps=None):
    """Where ``step()`` spends its time, kernel by kernel (torch.profiler, after one warm-up step that also
    runs the tuner): a markdown table of each kernel's total time per step, slowest first."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps = steps or PROFILE_STEPS
    step()
    cuda = problem.DEVICE == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if (e.device_time_total if cuda else e.self_cpu_time_total) > 0]
    key = (lambda e: e.device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    if cuda:  # kernels only: the CPU-side operators that launched them would count their time twice
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    events.sort(key=key, reverse=True)
    total = sum(key(e) for e in events)
    lines = [f"| kernel ({'GPU' if cuda else 'CPU self'} time) | ms per step | share |", "|---|---|---|"]
    for e in events[:15]:
        lines.append(f"| {e.key[:70].replace('|', '/')} | {key(e) / 1e3 / steps:.3f} | {key(e) / max(total, 1e-9):.0%} |")
    lines.append(f"| all | {total / 1e3 / steps:.3f} | 100% |")
    return "\n".join(lines)


def profile(frames=21, BLK=128, density=0.25, impl="triton", steps=None):
    """PBSA's forward + backward, kernel by kernel (``profile_table``)."""
    p = make_problem(frames, BLK, problem.DTYPE, problem.DEVICE)
    q, kp, vp = p["q"].requires_grad_(), p["kp"].requires_grad_(), p["vp"].requires_grad_()
    index, count, _ = make_lists(1, problem.HEADS, p["NSc"], p["NQB"], density, problem.DEVICE)
    dout = torch.randn_like(q)

    def step():
        for t in (q, kp, vp):
            t.grad = None
        pbsa_attention(q, kp, vp, index, count, p["block_len"], impl=impl).backward(dout)

    return profile_table(step, steps)


def profile_selection(frames=21, BLK=128, density=0.25, steps=None):
    """PBSA's forward with the fused block selection (the headline's row), kernel by kernel."""
    from worldkit_kernels.topk_triton import topk_blocks_triton

    p = make_problem(frames, BLK, problem.DTYPE, problem.DEVICE)
    NS = p["NSc"] + p["NQB"]
    K, own = min(NS, max(1, round(density * NS))), p["NSc"] + torch.arange(p["NQB"], device=problem.DEVICE)

    @torch.no_grad()
    def step():
        index, count = topk_blocks_triton(pool_blocks(p["q"], BLK), pool_blocks(p["k"], BLK), K, forced=own)
        pbsa_attention(p["q"], p["kp"], p["vp"], index, count, p["block_len"], impl="triton")

    return profile_table(step, steps)


def launch_cost(frames=21, BLK=128, density=0.0625, impl="triton", n=None, backward=True):
    """CPU time to issue one PBSA call against its time with the GPU waited for, forward (no grad) and
    forward + backward: where the first is the larger, the step is bound by the CPU that launches the
    kernels, not by the kernels. A markdown table (ms per call, mean of ``n`` calls after a warm-up; 50
    calls do not fill the GPU's launch queue)."""
    p = make_problem(frames, BLK, problem.DTYPE, problem.DEVICE)
    q, kp, vp = p["q"].requires_grad_(), p["kp"].requires_grad_(), p["vp"].requires_grad_()
    index, count, _ = make_lists(1, problem.HEADS, p["NSc"], p["NQB"], density, problem.DEVICE)
    dout = torch.randn_like(q)
    sync = torch.cuda.synchronize if problem.DEVICE == "cuda" else (lambda: None)

    def forward():
        with torch.no_grad():
            pbsa_attention(q, kp, vp, index, count, p["block_len"], impl=impl)

    def forward_backward():
        for t in (q, kp, vp):
            t.grad = None
        pbsa_attention(q, kp, vp, index, count, p["block_len"], impl=impl).backward(dout)

    n = n or LAUNCH_COST_CALLS
    lines = [f"| {frames} frames, block {BLK}, {density:.2%} | CPU ms to issue | ms with the GPU waited for |", "|---|---|---|"]
    for name, fn in (("forward", forward), ("forward + backward", forward_backward))[: 2 if backward else 1]:
        fn()
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        issued = time.perf_counter()
        sync()
        done = time.perf_counter()
        lines.append(f"| {name} | {(issued - start) / n * 1e3:.3f} | {(done - start) / n * 1e3:.3f} |")
    return "\n".join(lines)
