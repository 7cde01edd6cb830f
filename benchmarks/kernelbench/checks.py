"""Correctness before timings: Triton PBSA's edge cases against the fp64 reference and the PyTorch
path (``correctness``), the helper kernels and the fused block selection against PyTorch
(``helpers_correct``), and the gate every timed problem passes first (``gate``: FlashAttention's rule,
against fp64 at most 2x SDPA's error in the same dtype)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from worldkit_kernels import build_transposed, pbsa_attention_with_lse, pbsa_torch, reference
from worldkit_kernels.pbsa_reference import token_mask

from . import problem
from .measure import short_error
from .problem import make_lists

TOL = {torch.bfloat16: (3e-2, 6e-2), torch.float16: (5e-3, 1.5e-2)}  # edge cases: (out, grads) error / max |ref|
GATE_FACTOR = 2.0  # the gate: error against fp64 <= GATE_FACTOR x SDPA's (same dtype, same problem) ...
GATE_FLOOR = 2.0**-10  # ... + GATE_FLOOR x the reference's largest value (where SDPA's error is near 0)


def rel(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def correctness() -> bool:
    """Triton PBSA against the fp64 dense reference (and the PyTorch path), forward and backward."""
    print("== correctness: Triton PBSA vs fp64 dense reference and the PyTorch path")
    ok = True
    dev = problem.DEVICE
    for dtype in TOL:
        for BLK, shared in ((64, False), (128, True)):
            B, H, D, NSc, Tq = 1, 4, problem.HEAD_DIM, 24, 1000
            NQB = math.ceil(Tq / BLK)
            g = torch.Generator(device=dev).manual_seed(1)
            q = torch.randn(B, H, Tq, D, generator=g, device=dev).to(dtype)
            k = torch.randn(B, NSc + NQB, H, BLK, D, generator=g, device=dev).to(dtype)
            v = torch.randn(B, NSc + NQB, H, BLK, D, generator=g, device=dev).to(dtype)
            index, count, _ = make_lists(B, H, NSc, NQB, 0.3, dev, seed=2)
            if shared:
                index, count = index[:, :1], count[:, :1]
            count[0, 0, 1] = 0  # one empty row
            block_len = torch.randint(1, BLK + 1, (B, NSc + NQB), generator=g, device=dev, dtype=torch.int32)
            dout = torch.randn(B, H, Tq, D, generator=g, device=dev)
            results = {}
            for name, fn, cast in (
                ("triton", lambda *a: pbsa_attention_with_lse(*a, impl="triton"), dtype),
                ("torch", pbsa_torch, dtype),
                ("ref64", reference, torch.float64),
            ):
                qq, kk, vv = (t.detach().to(cast).requires_grad_() for t in (q, k, v))
                out, lse = fn(qq, kk, vv, index, count, block_len)
                (out.double() * dout).sum().backward()
                results[name] = (out, lse, qq.grad, kk.grad, vv.grad)
            ref = results["ref64"]
            t_out, t_grad = TOL[dtype]
            for impl in ("triton", "torch"):
                got = results[impl]
                errs = {n: rel(a, r) for n, a, r in zip(("out", "dq", "dk", "dv"), got[:1] + got[2:], ref[:1] + ref[2:])}
                fin = torch.isfinite(ref[1])
                lse_err = (got[1].double()[fin] - ref[1][fin]).abs().max().item()
                same_empty = torch.equal(torch.isinf(got[1]), torch.isinf(ref[1]))
                good = (
                    errs["out"] <= t_out and max(errs["dq"], errs["dk"], errs["dv"]) <= t_grad
                    and lse_err <= 1e-2 and same_empty and all(torch.isfinite(x).all() for x in got[:1] + got[2:])
                )
                ok &= good
                print(
                    f"  {str(dtype)[6:]:9s} BLK {BLK:3d} {'shared' if shared else 'per-head'} {impl:6s} "
                    + " ".join(f"{n} {e:.2e}" for n, e in errs.items())
                    + f" lse_abs {lse_err:.2e} {'ok' if good else 'FAIL'}"
                )
    return ok


def helpers_correct(NSc=24, NQB=37, candidates=(257, 1537)) -> tuple[bool, bool]:
    """The small kernels beside PBSA against their PyTorch references on the device: the backward's
    transposed lists and delta, the ragged-list packing (exactly, up to each row's count; delta to fp32
    rounding), and the fused block selection (its lists checked against fp64 scores, per head and
    shared, for each number of candidates). Returns (helpers ok, selection ok): a wrong selection only
    keeps ``auto`` on PyTorch, so it does not stop the timings."""
    from worldkit_kernels import lists_are_top_k
    from worldkit_kernels.pbsa_triton.backward import _delta
    from worldkit_kernels.pbsa_triton.lists import _pack, _pack_torch, _transposed
    from worldkit_kernels.topk_triton import topk_blocks_triton

    print("== correctness: the helper kernels and the fused block selection vs PyTorch")
    dev, B, H, D = problem.DEVICE, 1, problem.HEADS, problem.HEAD_DIM
    g = torch.Generator(device=dev).manual_seed(3)
    NS = NSc + NQB
    index, count, _ = make_lists(B, H, NSc, NQB, 0.3, dev, seed=4)
    count[0, 0, 1] = 0  # an empty row
    checks = {}
    got, want = _transposed(index, count, NS), build_transposed(index, count, NS)
    checks["transposed lists"] = all(torch.equal(a, b) for a, b in zip(got, want))
    BLK = 128
    block_len = torch.randint(1, BLK + 1, (B, NS), generator=g, device=dev, dtype=torch.int32)
    (got, got_nf), (want, want_nf) = _pack(index, count, block_len, BLK), _pack_torch(index, count, block_len, BLK)
    valid = torch.arange(index.shape[-1], device=dev) < count[..., None]  # entries past a row's count are unset
    checks["packed lists"] = torch.equal(got_nf, want_nf) and torch.equal(got[valid], want[valid])
    do, out = (torch.randn(B, H, 300, D, generator=g, device=dev).to(problem.DTYPE) for _ in range(2))
    dlse = torch.randn(B, H, 300, generator=g, device=dev)
    want = (do.float() * out.float()).sum(-1) - dlse
    checks["delta"] = rel(_delta(do, out, dlse), want) <= 1e-5 and rel(_delta(do, out, None), want + dlse) <= 1e-5
    selection = True
    for NC in candidates:
        pq = torch.randn(B, H, NQB, D, generator=g, device=dev).to(problem.DTYPE)
        pk = torch.randn(B, H, NC, D, generator=g, device=dev).to(problem.DTYPE)
        own = NC - NQB + torch.arange(NQB, device=dev)
        for shared in (False, True):
            K = max(1, round(0.25 * NC))
            try:
                idx, cnt = topk_blocks_triton(pq, pk, K, forced=own, shared_heads=shared)
                good = lists_are_top_k(pq, pk, K, idx, cnt, forced=own, shared_heads=shared)
            except Exception as e:
                print(f"  {short_error(e, 200)}")
                good = False
            checks[f"top-K, {NC} candidates, {'shared' if shared else 'per head'}"] = good
            selection &= good
    for name, good in checks.items():
        print(f"  {name}: {'ok' if good else 'FAIL'}")
    helpers = all(good for name, good in checks.items() if not name.startswith("top-K"))
    return helpers, selection


class GateFailed(Exception):
    """PBSA failed the correctness gate on a problem it was about to be timed on: the timings stop."""


def flat(x, Lk):
    """A pool-layout tensor (B, NS, H, BLK, D) as the flat key sequence (B, H, Lk, D)."""
    B, NS, H, BLK, D = x.shape
    return x.transpose(1, 2).reshape(B, H, NS * BLK, D)[:, :, :Lk]


def outputs(fn, inputs, dout, Lk):
    """``fn()``'s output and, given ``dout``, the gradients of its inputs (q, k, v; a pool's read back in
    the flat layout): {"out", "dq", "dk", "dv"}. The inputs' .grad are left None."""
    for t in inputs:
        t.grad = None
    with torch.set_grad_enabled(dout is not None):
        out = fn()
    got = {"out": out.detach()}
    if dout is not None:
        out.backward(dout)
        got.update(zip(("dq", "dk", "dv"), (flat(t.grad, Lk) if t.dim() == 5 else t.grad for t in inputs)))
        for t in inputs:
            t.grad = None
    return got


def reference64(p, index, count, dout):
    """The problem in fp64 through the dense reference, one head at a time (one head's scores at 21
    frames: 1.2 GB): ``outputs``' dict."""
    H = p["q"].shape[1]
    parts = []
    for h in range(H):
        hs = slice(0, 1) if index.shape[1] == 1 else slice(h, h + 1)
        q = p["q"].detach()[:, h : h + 1].double().requires_grad_(dout is not None)
        k, v = (p[n].detach()[:, :, h : h + 1].double().requires_grad_(dout is not None) for n in ("kp", "vp"))
        d = None if dout is None else dout[:, h : h + 1].double()
        parts.append(outputs(lambda: reference(q, k, v, index[:, hs], count[:, hs], p["block_len"])[0], [q, k, v], d, p["Lk"]))
    return {key: torch.cat([part[key] for part in parts], 1) for key in parts[0]}


def sdpa_same_dtype(p, index, count, dout):
    """SDPA in the benchmark's dtype on the same problem (torch's default backend): all keys at full
    density, else the lists as a token mask over the flat keys. ``outputs``' dict."""
    q, k, v = (p[n].detach().requires_grad_(dout is not None) for n in ("q", "k", "v"))
    NS, BLK = p["kp"].shape[1], p["kp"].shape[3]
    full = bool((count == NS).all())
    mask = None if full else token_mask(index, count, p["block_len"], p["Tq"], NS, BLK)[..., : p["Lk"]]
    return outputs(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), [q, k, v], dout, p["Lk"])


def gate(name, got, sdpa, ref):
    """FlashAttention's rule, for each of ``ref``'s tensors: max |got - ref| <= GATE_FACTOR x
    max |sdpa - ref| + GATE_FLOOR x max |ref|, and finite. (passed, one line of figures)."""
    ok, parts = True, []
    for key, r in ref.items():
        err = (got[key].double() - r).abs().max().item()
        base = (sdpa[key].double() - r).abs().max().item()
        bound = GATE_FACTOR * base + GATE_FLOOR * r.abs().max().item()
        good = err <= bound and bool(torch.isfinite(got[key]).all())  # a NaN error fails too
        ok &= good
        parts.append(f"{key} {err:.2e} (SDPA {base:.2e}, bound {bound:.2e}){'' if good else ' FAIL'}")
    return ok, f"{name}: " + ", ".join(parts)
