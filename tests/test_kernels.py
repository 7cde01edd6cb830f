"""PBSA kernels against the dense fp64 reference: outputs, lse and gradients; block helpers' properties.

The Triton kernels run on the CPU under TRITON_INTERPRET=1, set here before Triton is imported.
"""
import contextlib
import importlib
import itertools
import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worldkit_kernels import (
    build_transposed,
    lists_are_top_k,
    pbsa_attention,
    pbsa_attention_with_lse,
    pbsa_torch,
    pool_blocks,
    reference,
    resolve_top_k,
)
from worldkit_kernels.blocks import topk_blocks_torch as topk_blocks  # the PyTorch implementation

try:  # the kernels must have been decorated under the interpreter (not imported earlier without it)
    _kernels = importlib.import_module("worldkit_kernels.pbsa_triton.forward")
    HAS_TRITON = type(_kernels._fwd_kernel).__name__ == "InterpretedFunction"
except ImportError:
    HAS_TRITON = False
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton interpreter not available")


def config_lists():
    """The kernels' candidate launch configurations as (module, name): the forward's, dQ's and dK/dV's."""
    forward = importlib.import_module("worldkit_kernels.pbsa_triton.forward")
    backward = importlib.import_module("worldkit_kernels.pbsa_triton.backward")
    return [(forward, "FWD_CONFIGS"), (backward, "DQ_CONFIGS"), (backward, "DKDV_CONFIGS")]


TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 1e-2}  # error relative to max |ref|


def make_case(B, H, Hi, Tq, D, NS, BLK, n_persistent, density, p_empty, ragged, dtype, seed, scale_logits=1.0):
    """Random q, slot pool and lists: [persistent (same for all rows) ; random local subset] per row."""
    g = torch.Generator().manual_seed(seed)
    NQB = -(-Tq // BLK)
    q = torch.randn(B, H, Tq, D, generator=g, dtype=torch.float64) * scale_logits  # (B, H, Tq, D)
    k = torch.randn(B, NS, H, BLK, D, generator=g, dtype=torch.float64)  # (B, NS, H, BLK, D)
    v = torch.randn(B, NS, H, BLK, D, generator=g, dtype=torch.float64)
    perm = torch.randperm(NS, generator=g)
    persistent = perm[:n_persistent].sort().values
    others = perm[n_persistent:]
    MAXK = NS
    index = torch.full((B, Hi, NQB, MAXK), -1, dtype=torch.int32)
    count = torch.zeros(B, Hi, NQB, dtype=torch.int32)
    for b in range(B):
        for h in range(Hi):
            for r in range(NQB):
                if torch.rand(1, generator=g).item() < p_empty:
                    continue
                pick = others[torch.rand(len(others), generator=g) < density].sort().values
                row = torch.cat([persistent, pick])
                index[b, h, r, : len(row)] = row.to(torch.int32)
                count[b, h, r] = len(row)
    block_len = None
    if ragged:
        short = torch.randint(0, BLK + 1, (B, NS), generator=g, dtype=torch.int32)
        full = torch.rand(B, NS, generator=g) < 0.5  # rows mix full slots (the unmasked loop) and short ones
        block_len = torch.where(full, BLK, short).to(torch.int32)  # (B, NS)
    cast = [t.to(dtype) for t in (q, k, v)]
    return cast, index, count, block_len


def rel_err(a, ref):
    """Max abs error over max |ref| (1 if ref is all zeros)."""
    a, ref = a.double(), ref.double()
    denom = ref.abs().max().item() or 1.0
    return (a - ref).abs().max().item() / denom


def check_lse(lse, ref_lse, tol):
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "empty rows differ"
    fin = torch.isfinite(ref_lse)
    if fin.any():
        assert (lse.double()[fin] - ref_lse.double()[fin]).abs().max().item() <= tol * 10


def run_and_grads(fn, q, k, v, dout, dlse):
    """Forward with fn, then gradients of <out, dout> + <finite lse, dlse> w.r.t. q, k, v."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out, lse = fn(q, k, v)
    loss = (out.double() * dout).sum() + (torch.where(torch.isfinite(lse), lse, 0.0).double() * dlse).sum()
    return (out, lse, *torch.autograd.grad(loss, (q, k, v)))


def check_against_reference(impl, tensors, index, count, block_len, dtype):
    q, k, v = tensors
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(q.shape, generator=g, dtype=torch.float64)
    dlse = torch.randn(q.shape[:3], generator=g, dtype=torch.float64)
    ref = run_and_grads(
        lambda q_, k_, v_: reference(q_, k_, v_, index, count, block_len),
        q.double(), k.double(), v.double(), dout, dlse,
    )
    got = run_and_grads(
        lambda q_, k_, v_: pbsa_attention_with_lse(q_, k_, v_, index, count, block_len, impl=impl),
        q, k, v, dout, dlse,
    )
    assert got[0].dtype == dtype and got[0].shape == q.shape
    assert got[1].shape == q.shape[:3] and got[1].dtype in (torch.float32, torch.float64)
    check_lse(got[1], ref[1], TOL[dtype])
    for name, a, r in zip(["out", "lse", "dq", "dk", "dv"], got, ref):
        if name != "lse":
            assert torch.isfinite(a).all(), name
            assert rel_err(a, r) <= TOL[dtype] * (4 if name != "out" else 1), (name, rel_err(a, r))


shapes = st.fixed_dictionaries(
    dict(
        B=st.integers(1, 2),
        H=st.integers(1, 3),
        shared=st.booleans(),
        NQB=st.integers(1, 3),
        tail=st.integers(0, 3),
        NS=st.integers(1, 8),
        n_persistent=st.integers(0, 3),
        density=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
        p_empty=st.sampled_from([0.0, 0.3]),
        ragged=st.booleans(),
        seed=st.integers(0, 2**16),
    )
)


def case_from(s, BLK, D, dtype, scale_logits=1.0):
    Tq = max(1, s["NQB"] * BLK - s["tail"])
    Hi = 1 if s["shared"] else s["H"]
    return make_case(
        s["B"], s["H"], Hi, Tq, D, s["NS"], BLK, min(s["n_persistent"], s["NS"]), s["density"],
        s["p_empty"], s["ragged"], dtype, s["seed"], scale_logits,
    )


@settings(max_examples=40, deadline=None)
@given(s=shapes, BLK=st.sampled_from([1, 3, 4, 8]), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_torch_path_matches_reference(s, BLK, dtype):
    check_against_reference("torch", *case_from(s, BLK, 8, dtype), dtype)


@settings(max_examples=10, deadline=None)
@given(s=shapes, scale_logits=st.sampled_from([1.0, 10.0]))
def test_torch_path_fp16(s, scale_logits):
    check_against_reference("torch", *case_from(s, 4, 16, torch.float16, scale_logits), torch.float16)


@needs_triton
@settings(max_examples=12, deadline=None)
@given(
    s=shapes,
    BLK=st.sampled_from([4, 16]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    scale_logits=st.sampled_from([1.0, 10.0]),
)
def test_triton_matches_reference(s, BLK, dtype, scale_logits):
    s = dict(s, B=1, H=min(s["H"], 2), NS=min(s["NS"], 6))
    check_against_reference("triton", *case_from(s, BLK, 32, dtype, scale_logits), dtype)


@needs_triton
@pytest.mark.parametrize("D", [64, 128])
def test_triton_head_dims(D):
    (q, k, v), index, count, block_len = make_case(1, 2, 2, 20, D, 3, 16, 1, 0.5, 0.0, True, torch.float32, 7)
    check_against_reference("triton", (q, k, v), index, count, block_len, torch.float32)


@needs_triton
def test_triton_sub_tiles(monkeypatch):
    """Blocks wider than the sub-tiles: keys and backward query rows walked in several steps."""
    for mod, name in config_lists():
        sub = [{k: (16 if k.startswith("BLOCK_") else v) for k, v in c.items()} for c in getattr(mod, name)]
        monkeypatch.setattr(mod, name, sub)
    case = make_case(1, 2, 1, 3 * 32 - 7, 32, 4, 32, 1, 0.5, 0.2, True, torch.float32, 13)
    check_against_reference("triton", *case, torch.float32)
    # full blocks (no row or key masks in the kernels), walked in sub-tiles too
    case = make_case(2, 2, 2, 3 * 32, 32, 5, 32, 2, 0.5, 0.2, False, torch.float32, 14)
    check_against_reference("triton", *case, torch.float32)


@needs_triton
def test_triton_every_tuner_candidate(monkeypatch):
    """Each candidate the GPU tuner may keep computes the same attention: the configurations' tile
    shapes at half size (128 -> 64, the block 64 wide), so row splits and key/query sub-tiles keep
    their ratios to the tile."""
    mods = {name: mod for mod, name in config_lists()}
    lists = {name: getattr(mod, name) for name, mod in mods.items()}
    half = {name: [{k: (max(16, v // 2) if k.startswith("BLOCK_") else v) for k, v in c.items()} for c in cfgs]
            for name, cfgs in lists.items()}
    assert any(c["BLOCK_M"] < 64 for c in half["FWD_CONFIGS"])  # a row split is among them
    assert any(c.get("SPLIT", 1) > 1 for c in half["FWD_CONFIGS"])  # and a split list
    for i in range(max(map(len, half.values()))):
        for name, cfgs in half.items():
            monkeypatch.setattr(mods[name], name, [cfgs[min(i, len(cfgs) - 1)]])
        case = make_case(1, 2, 2, 2 * 64 - 9, 32, 5, 64, 1, 0.6, 0.25, True, torch.float32, 30 + i)
        check_against_reference("triton", *case, torch.float32)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_full_blocks(dtype):
    """Query and key blocks all full (the unmasked kernel variants), shared and per-head lists."""
    for Hi, seed in ((1, 21), (3, 22)):
        case = make_case(2, 3, Hi, 4 * 16, 32, 6, 16, 2, 0.5, 0.25, False, dtype, seed)
        check_against_reference("triton", *case, dtype)


@needs_triton
def test_packed_lists_carry_slot_and_length_full_slots_first():
    """With ragged blocks the kernels read slot and valid rows from one int32 per list entry, and each
    row's full slots come first (they run without masks), then its short ones; padding stays last."""
    P = importlib.import_module("worldkit_kernels.pbsa_triton.lists")
    index = torch.tensor([[[[0, 2, 5], [1, 3, -1]]]], dtype=torch.int32)  # (1, 1, 2, 3); -1: padding past count
    count = torch.tensor([[[3, 2]]], dtype=torch.int32)
    block_len = torch.tensor([[64, 64, 17, 64, 64, 3]], dtype=torch.int32)  # (1, NS=6)
    lists, nfull = P._pack_torch(index, count, block_len, 64)
    assert lists.dtype == torch.int32 and lists.shape == index.shape and nfull.tolist() == [[[1, 2]]]
    slot, rows = lists >> P._LEN_BITS, lists & ((1 << P._LEN_BITS) - 1)
    assert slot[0, 0, 0].tolist() == [0, 2, 5] and rows[0, 0, 0].tolist() == [64, 17, 3]  # 2 and 5 are short
    assert slot[0, 0, 1, :2].tolist() == [1, 3] and rows[0, 0, 1, :2].tolist() == [64, 64]
    index2 = torch.tensor([[[[2, 3, 4]]]], dtype=torch.int32)
    lists2, nfull2 = P._pack(index2, torch.tensor([[[3]]], dtype=torch.int32), block_len, 64)
    assert (lists2 >> P._LEN_BITS)[0, 0, 0].tolist() == [3, 4, 2] and nfull2.item() == 2  # stable within kinds
    # lengths above the block are capped, as the kernels did when they read block_len themselves
    big = torch.full((1, 6), 99, dtype=torch.int32)
    assert int(P._pack(index, count, big, 64)[0][0, 0, 0, 0] & ((1 << P._LEN_BITS) - 1)) == 64
    with pytest.raises(ValueError, match="block < 2048"):
        P._pack(index, count, block_len, 2048)
    empty, nf = P._pack(index[..., :0], count * 0, block_len, 64)  # no list entries at all
    assert empty.shape == (1, 1, 2, 0) and nf.tolist() == [[[0, 0]]]


@needs_triton
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), Hi=st.integers(1, 3), NQB=st.integers(1, 4), NS=st.integers(1, 12),
       MAXK=st.integers(1, 12), BLK=st.sampled_from([1, 8, 16, 64]), seed=st.integers(0, 10_000))
def test_pack_kernel_matches_its_torch_reference(B, Hi, NQB, NS, MAXK, BLK, seed):
    """The one-launch packing kernel gives the sort-based reference's entries (to each row's count)
    and full counts, with padding, duplicate-free rows, lengths 0..BLK and lengths past BLK."""
    P = importlib.import_module("worldkit_kernels.pbsa_triton.lists")
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(NS, generator=g)[:MAXK] for _ in range(B * Hi * NQB)]) if MAXK <= NS else \
        torch.randint(0, NS, (B * Hi * NQB, MAXK), generator=g)
    index = index.view(B, Hi, NQB, -1).to(torch.int32)
    count = torch.randint(0, index.shape[-1] + 1, (B, Hi, NQB), generator=g, dtype=torch.int32)
    block_len = torch.randint(-1, BLK + 3, (B, NS), generator=g, dtype=torch.int32)
    block_len[torch.rand(B, NS, generator=g) < 0.4] = BLK
    got, got_nf = P._pack(index, count, block_len, BLK)
    ref, ref_nf = P._pack_torch(index, count, block_len, BLK)
    assert torch.equal(got_nf, ref_nf)
    for b, h, r in itertools.product(range(B), range(Hi), range(NQB)):
        n = int(count[b, h, r])
        assert torch.equal(got[b, h, r, :n], ref[b, h, r, :n])


@needs_triton
@pytest.mark.parametrize("ragged", [False, True])
def test_triton_lists_with_no_entries(ragged):
    """A list dimension of size 0 (nothing selected anywhere): zeros, lse -inf, zero gradients, and no
    read of the (empty) lists."""
    B, H, Tq, D, NS, BLK = 1, 2, 20, 16, 3, 16
    q = torch.randn(B, H, Tq, D, requires_grad=True)
    k = torch.randn(B, NS, H, BLK, D, requires_grad=True)
    v = torch.randn(B, NS, H, BLK, D, requires_grad=True)
    index = torch.empty(B, 1, 2, 0, dtype=torch.int32)
    count = torch.zeros(B, 1, 2, dtype=torch.int32)
    block_len = torch.tensor([[16, 16, 4]], dtype=torch.int32) if ragged else None
    out, lse = pbsa_attention_with_lse(q, k, v, index, count, block_len, impl="triton")
    assert out.abs().max() == 0 and bool(torch.isneginf(lse).all())
    out.sum().backward()
    assert q.grad.abs().max() == 0 and k.grad.abs().max() == 0 and v.grad.abs().max() == 0


@needs_triton
def test_launch_tuner_keeps_the_fastest_configuration(monkeypatch):
    """On a GPU each kernel times its candidate configurations once per problem class and keeps the
    fastest; a candidate that fails to launch is skipped; the default runs when tuning is off."""
    mod = importlib.import_module("worldkit_kernels.pbsa_triton.tuner")
    for name in ("_tuned", "_timings", "_fits"):
        monkeypatch.setattr(mod, name, {})
    monkeypatch.setattr(mod, "tuning", lambda: True)
    configs = [dict(BLOCK_N=64, num_warps=8), dict(BLOCK_N=128, num_warps=4), dict(BLOCK_N=32, num_warps=4),
               dict(BLOCK_N=256, num_warps=4)]
    cost = {64: 3.0, 32: 1.0, 16: 0.5}
    ran = []

    def launch(c):
        if c["num_warps"] == 8 and c["BLOCK_N"] == 16:
            raise RuntimeError("out of resources")
        ran.append(c)

    def timer(fn):
        fn()
        return cost[ran[-1]["BLOCK_N"]] if ran[-1]["num_warps"] == 4 else 9.0

    best = mod.launch(("k", 1), configs, 64, launch, timer)
    assert best == dict(BLOCK_N=32, num_warps=4)  # 128 and 256 capped to the 64-wide tile, then fastest
    assert ran[-1] == best and mod._tuned[("k", 1)] == best
    assert mod._timings[("k", 1)] == [(dict(BLOCK_N=64, num_warps=8), 9.0), (dict(BLOCK_N=64, num_warps=4), 3.0),
                                      (dict(BLOCK_N=32, num_warps=4), 1.0)]  # every candidate's time, for the report
    ran.clear()
    assert mod.launch(("k", 1), configs, 64, launch, timer) == best and ran == [best]  # cached, no timing
    best16 = mod.launch(("k", 2), configs, 16, launch, timer)  # all capped to 16: the failing one skipped
    assert best16 == dict(BLOCK_N=16, num_warps=4)
    assert mod._timings[("k", 2)][0] == (dict(BLOCK_N=16, num_warps=8), float("inf"))
    monkeypatch.setattr(mod, "tuning", lambda: False)
    ran.clear()
    assert mod.launch(("k", 3), configs, 64, launch, timer) == dict(BLOCK_N=64, num_warps=8) and len(ran) == 1
    # tuning off: the default even where a tuned choice is kept (the benchmark's untuned rows)
    assert mod.launch(("k", 1), configs, 64, launch, timer) == dict(BLOCK_N=64, num_warps=8) and len(ran) == 2


def test_the_default_configuration_is_the_first_made_for_the_tile(monkeypatch):
    """Untuned, a block of 64 rows runs the first configuration whose tiles fit 64 uncapped, not the
    128-row default cut down; where none fits uncapped, the first one capped."""
    mod = importlib.import_module("worldkit_kernels.pbsa_triton.tuner")
    monkeypatch.setattr(mod, "_fits", {})
    monkeypatch.setattr(mod, "tuning", lambda: False)
    configs = [dict(BLOCK_M=128, BLOCK_N=128, num_warps=8), dict(BLOCK_M=64, BLOCK_N=64, num_warps=4),
               dict(BLOCK_M=64, BLOCK_N=32, num_warps=4)]
    ran = []
    assert mod.launch(("t", 128), configs, 128, ran.append) == configs[0]
    assert mod.launch(("t", 64), configs, 64, ran.append) == configs[1]
    assert mod.launch(("t", 16), configs, 16, ran.append) == dict(BLOCK_M=16, BLOCK_N=16, num_warps=8)
    assert ran == [configs[0], configs[1], dict(BLOCK_M=16, BLOCK_N=16, num_warps=8)]
    FWD_CONFIGS, DQ_CONFIGS, DKDV_CONFIGS = (getattr(m, name) for m, name in config_lists())
    for configs_, tile in ((FWD_CONFIGS, 128), (FWD_CONFIGS, 64), (DQ_CONFIGS, 64), (DKDV_CONFIGS, 64)):
        chosen = mod.launch(("lists", len(ran), tile), configs_, tile, ran.append)
        assert chosen in configs_ and all(v <= tile for k, v in chosen.items() if k.startswith("BLOCK_"))


@needs_triton
def test_capped_configurations_follow_a_changed_list():
    """The capped list is remembered per list and tile, and made again when the list was edited in place;
    the host-side power of two matches Triton's."""
    mod = importlib.import_module("worldkit_kernels.pbsa_triton.tuner")
    configs = [dict(BLOCK_M=128, BLOCK_N=128, num_warps=8), dict(BLOCK_M=64, BLOCK_N=32, num_warps=4)]
    assert mod.candidates(configs, 64) == [dict(BLOCK_M=64, BLOCK_N=32, num_warps=4), dict(BLOCK_M=64, BLOCK_N=64, num_warps=8)]
    assert mod.candidates(configs, 64) is mod.candidates(configs, 64)  # remembered
    configs[1]["num_warps"] = 2
    assert mod.candidates(configs, 64)[0] == dict(BLOCK_M=64, BLOCK_N=32, num_warps=2)
    configs[:] = configs[:1]
    assert mod.candidates(configs, 64) == [dict(BLOCK_M=64, BLOCK_N=64, num_warps=8)]
    next_power_of_2 = importlib.import_module("triton").next_power_of_2
    _pow2 = importlib.import_module("worldkit_kernels.pbsa_triton.common")._pow2
    assert [_pow2(n) for n in range(0, 2000)] == [next_power_of_2(n) for n in range(0, 2000)]


def test_untuned_launch_falls_back_when_a_configuration_does_not_fit(monkeypatch):
    """Tuning off (or one candidate): a configuration out of shared memory on this device (fp32 or a big
    head dim) gives way to the next; the one that fits is remembered per problem class."""
    from triton.runtime.errors import OutOfResources

    mod = importlib.import_module("worldkit_kernels.pbsa_triton.tuner")
    monkeypatch.setattr(mod, "_fits", {})
    monkeypatch.setattr(mod, "tuning", lambda: False)
    configs = [dict(BLOCK_N=64, num_stages=3), dict(BLOCK_N=64, num_stages=2), dict(BLOCK_N=32, num_stages=2)]
    tried = []

    def launch(c):
        tried.append(c)
        if c["num_stages"] == 3:
            raise OutOfResources(262144, 232448, "shared memory")

    assert mod.launch(("big", 1), configs, 64, launch) == configs[1] and tried == configs[:2]
    tried.clear()
    assert mod.launch(("big", 1), configs, 64, launch) == configs[1] and tried == [configs[1]]  # remembered
    with pytest.raises(OutOfResources):  # nothing fits: the error of the last one
        mod.launch(("big", 2), configs[:1], 64, launch)
    assert mod.launch(("big", 1), configs[1:2], 64, launch) == configs[1]  # a shorter list: no stale index
    with pytest.raises(RuntimeError, match="other"):  # any other failure is not hidden
        mod.launch(("big", 3), configs, 64, lambda c: (_ for _ in ()).throw(RuntimeError("other")))


def row_kinds_case(dtype):
    """Rows of every kind in one batch: persistent only, local only, both, empty (per-head lists)."""
    B, H, BLK, D, NS = 1, 2, 16, 32, 6
    Tq = 4 * BLK - 5  # ragged last query block
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, H, Tq, D, generator=g).to(dtype)
    k = torch.randn(B, NS, H, BLK, D, generator=g).to(dtype)
    v = torch.randn(B, NS, H, BLK, D, generator=g).to(dtype)
    rows = [[0, 1], [3, 5], [0, 1, 2, 4], []]  # slots 0, 1 persistent
    index = torch.full((B, H, 4, 4), -1, dtype=torch.int64)
    count = torch.zeros(B, H, 4, dtype=torch.int64)
    for h in range(H):
        for r, row in enumerate(rows[h:] + rows[:h]):
            index[0, h, r, : len(row)] = torch.tensor(row)
            count[0, h, r] = len(row)
    block_len = torch.tensor([[16, 9, 16, 1, 16, 16]], dtype=torch.int32)
    return (q, k, v), index, count, block_len


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_row_kinds_and_empty_rows(impl):
    (q, k, v), index, count, block_len = row_kinds_case(torch.float32)
    check_against_reference(impl, (q, k, v), index, count, block_len, torch.float32)
    q = q.clone().requires_grad_()
    out, lse = pbsa_attention_with_lse(q, k, v, index, count, block_len, impl=impl)
    empty = count[0, 0] == 0  # head 0: last query block reads nothing
    rows = torch.arange(q.shape[2]) // 16
    assert (out[0, 0, empty[rows]] == 0).all() and torch.isneginf(lse[0, 0, empty[rows]]).all()
    out.sum().backward()
    assert (q.grad[0, 0, empty[rows]] == 0).all()


@needs_triton
def test_triton_strided_pool_and_determinism():
    """Slot pools that are views of a larger buffer; two backward passes give identical gradients."""
    (q, k, v), index, count, block_len = make_case(2, 2, 2, 30, 32, 6, 16, 2, 0.5, 0.0, False, torch.float32, 11)
    big_k = torch.randn(2, 9, 2, 16, 32)
    big_k[:, 1:7] = k
    k_view = big_k[:, 1:7]  # non-contiguous slot pool
    outs = [pbsa_attention(q, k_view, v, index, count, impl="triton") for _ in range(2)]
    ref = pbsa_attention(q, k, v, index, count, impl="torch")
    assert rel_err(outs[0], ref) < 1e-5
    grads = []
    for _ in range(2):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k_view, v))
        pbsa_attention(qq, kk, vv, index.long(), count.long(), impl="triton").square().sum().backward()
        grads.append((qq.grad, kk.grad, vv.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_auto_dispatch_and_validation():
    (q, k, v), index, count, _ = make_case(1, 2, 1, 8, 8, 3, 4, 1, 1.0, 0.0, False, torch.float32, 0)
    assert torch.equal(pbsa_attention(q, k, v, index, count), pbsa_torch(q, k, v, index, count)[0])
    with pytest.raises(ValueError, match="impl"):
        pbsa_attention(q, k, v, index, count, impl="cuda")
    with pytest.raises(ValueError, match="index"):
        pbsa_attention(q, k, v, index[:, :, :1], count[:, :, :1])
    with pytest.raises(ValueError, match="k, v"):
        pbsa_attention(q, k[..., :4], v, index, count)
    if HAS_TRITON:
        with pytest.raises(ValueError, match="positive softmax scale"):
            pbsa_attention(q, k, v, index, count, scale=0.0, impl="triton")


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
def test_lists_that_are_not_sets_of_slots_are_refused(impl):
    """A slot listed twice in a row would be read twice by the gathering paths and once by the dense
    reference: refused, as are slots outside the pool and counts past the list, naming the row."""
    (q, k, v), index, count, _ = make_case(2, 2, 2, 8, 16, 5, 4, 1, 1.0, 0.0, False, torch.float32, 0)
    pbsa_attention(q, k, v, index, count, impl=impl)  # the case itself is fine
    twice = index.clone()
    twice[1, 0, 1, 1] = twice[1, 0, 1, 0]  # batch 1, head 0, query block 1: its first slot again
    slot = int(twice[1, 0, 1, 0])
    with pytest.raises(ValueError, match=rf"row \(batch 1, head 0, query block 1\) lists slot {slot} twice"):
        pbsa_attention(q, k, v, twice, count, impl=impl)
    out, ref = pbsa_attention(q, k, v, twice, count, impl="torch", check=False), reference(q, k, v, twice, count)[0]
    assert rel_err(out, ref) > 1e-3  # what the refusal prevents
    outside = index.clone()
    outside[0, 1, 0, 0] = 5
    with pytest.raises(ValueError, match=r"row \(batch 0, head 1, query block 0\) lists slot 5; slots are 0..4"):
        pbsa_attention(q, k, v, outside, count, impl=impl)
    too_many = count.clone()
    too_many[0, 0, 1] = index.shape[-1] + 1
    with pytest.raises(ValueError, match=r"count: row \(batch 0, head 0, query block 1\) has 6 entries"):
        pbsa_attention(q, k, v, index, too_many, impl=impl)
    padded, shorter = index.clone(), count.clone()
    shorter[0, 0, 0] = 2
    padded[0, 0, 0, 2:] = padded[0, 0, 0, 0]  # entries past the count are not read: repeats there are fine
    pbsa_attention(q, k, v, padded, shorter, impl=impl)


def test_torch_path_chunks_rows(monkeypatch):
    """Bounding the gather memory splits rows into chunks without changing the result."""
    mod = importlib.import_module("worldkit_kernels.pbsa_torch")  # the module, not the function

    (q, k, v), index, count, block_len = make_case(1, 2, 2, 40, 8, 8, 4, 2, 0.5, 0.2, True, torch.float64, 5)
    whole = mod.pbsa_torch(q, k, v, index, count, block_len)
    monkeypatch.setattr(mod, "GATHER_BUDGET", 1)
    chunked = mod.pbsa_torch(q, k, v, index, count, block_len)
    assert torch.allclose(whole[0], chunked[0]) and torch.equal(torch.isinf(whole[1]), torch.isinf(chunked[1]))


# ------------------------------------------------------------------------------------------------
# block helpers


def _transpose_fn(impl):
    if impl == "torch":
        return build_transposed
    return importlib.import_module("worldkit_kernels.pbsa_triton.lists")._transposed


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 2), Hi=st.integers(1, 2), NQB=st.integers(1, 80), NS=st.integers(1, 36),
    wide=st.booleans(), shared_count=st.booleans(), seed=st.integers(0, 2**16),
)
def test_build_transposed(impl, B, Hi, NQB, NS, wide, shared_count, seed):
    """Per-slot reader lists (the PyTorch helper, and the Triton kernels the backward runs: up to 80 query
    blocks, so several slots per program and padded rows): readers ascending, then -1; counts exact.
    Entries past a row's count hold real slots, which must be ignored; int32 or int64 lists; counts
    expanded over heads."""
    build_transposed = _transpose_fn(impl)
    g = torch.Generator().manual_seed(seed)
    MAXK = NS
    dtype = torch.int64 if wide else torch.int32
    index = torch.randint(0, NS, (B, Hi, NQB, MAXK), generator=g).to(dtype)  # padding: real slots
    count = torch.randint(0, NS + 1, (B, 1 if shared_count else Hi, NQB), generator=g).to(dtype)
    count = count.expand(B, Hi, NQB)
    for b in range(B):
        for h in range(Hi):
            for r in range(NQB):
                n = int(count[b, h, r])
                index[b, h, r, :n] = torch.randperm(NS, generator=g)[:n].sort().values.to(dtype)
    tindex, tcount = build_transposed(index, count, NS)
    assert tindex.shape == (B, Hi, NS, NQB) and tindex.dtype == torch.int32 and tcount.dtype == torch.int32
    for b in range(B):
        for h in range(Hi):
            lists = [set(index[b, h, r, : int(count[b, h, r])].tolist()) for r in range(NQB)]
            for s in range(NS):
                readers = [r for r in range(NQB) if s in lists[r]]
                assert int(tcount[b, h, s]) == len(readers)
                assert tindex[b, h, s].tolist() == readers + [-1] * (NQB - len(readers))


@needs_triton
def test_transposed_lists_clamp_counts_past_the_list():
    """A count larger than the list reads only the list (as the PyTorch helper does)."""
    mod = importlib.import_module("worldkit_kernels.pbsa_triton.lists")
    index = torch.arange(15).view(1, 1, 3, 5)  # five entries per row, rows far apart in memory order
    count = torch.full((1, 1, 3), 9)
    want = build_transposed(index, count, 20)
    got = mod._transposed(index, count, 20)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_triton
@settings(max_examples=15, deadline=None)
@given(
    B=st.integers(1, 2), H=st.integers(1, 3), Tq=st.integers(1, 300), D=st.sampled_from([16, 32]),
    dtype=st.sampled_from([torch.float32, torch.float16]), with_dlse=st.booleans(), strided_out=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_backward_delta(B, H, Tq, D, dtype, with_dlse, strided_out, seed):
    """delta = rowsum(dout * out) - dlse in fp32, one launch over several programs along the tokens,
    from strided inputs (a head dim that is not the last, contiguous dim is copied first)."""
    delta_fn = importlib.import_module("worldkit_kernels.pbsa_triton.backward")._delta
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(B, Tq, H, D, generator=g).to(dtype).transpose(1, 2)  # (B, H, Tq, D), strided
    out = torch.randn(B, H, D, Tq, generator=g).to(dtype).transpose(2, 3) if strided_out else \
        torch.randn(B, H, Tq, D, generator=g).to(dtype)
    dlse = torch.randn(B, H, Tq, generator=g) if with_dlse else None
    want = (do.double() * out.double()).sum(-1) - (dlse.double() if with_dlse else 0)
    got = delta_fn(do, out, dlse)
    assert got.dtype == torch.float32 and got.shape == (B, H, Tq) and got.is_contiguous()
    assert torch.allclose(got.double(), want, atol=1e-4 * D)


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 40), block=st.integers(1, 9), dtype=st.sampled_from([torch.float32, torch.float16]))
def test_pool_blocks(T, block, dtype):
    x = torch.randn(2, 3, T, 5).to(dtype)  # (B, H, T, D)
    pooled = pool_blocks(x, block)
    assert pooled.shape == (2, 3, -(-T // block), 5) and pooled.dtype == dtype
    for i in range(pooled.shape[2]):
        want = x[:, :, i * block : (i + 1) * block].float().mean(2)
        assert torch.allclose(pooled[:, :, i].float(), want, atol=1e-3 if dtype == torch.float16 else 1e-6)


def _topk(impl):
    if impl == "torch":
        return topk_blocks
    return importlib.import_module("worldkit_kernels.topk_triton").topk_blocks_triton


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=needs_triton)])
@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 2), H=st.integers(1, 3), NQB=st.integers(1, 5), NL=st.integers(0, 8),
    k=st.integers(0, 12), forced=st.booleans(), shared=st.booleans(), seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float16]),
)
def test_topk_blocks(impl, B, H, NQB, NL, k, forced, shared, seed, dtype):
    """Row-wise top-K by pooled score (the PyTorch path, and the fused Triton kernel under the
    interpreter): sorted distinct lists of K candidates, the own block kept, and every freely chosen
    block scoring at least as high as every one left out (fp64 scores of the same inputs)."""
    g = torch.Generator().manual_seed(seed)
    NC = NL + NQB
    pq = torch.randn(B, H, NQB, 16, generator=g).to(dtype)  # (B, H, NQB, D)
    pk = torch.randn(B, H, NC, 16, generator=g).to(dtype)  # (B, H, NC, D)
    own = torch.arange(NQB) + NL
    index, count = _topk(impl)(pq, pk, k, forced=own if forced else None, shared_heads=shared)
    K = min(max(k, int(forced)), NC)
    assert index.shape == (B, 1 if shared else H, NQB, K) and index.dtype == torch.long
    assert count.shape == index.shape[:3] and count.dtype == torch.long and (count == K).all()
    score = (torch.einsum("bhqd,bhcd->bhqc", pq.double(), pk.double()) / 16**0.5).softmax(-1)
    if shared:
        score = score.sum(1, keepdim=True)
    for b in range(index.shape[0]):
        for h in range(index.shape[1]):
            for r in range(NQB):
                row = index[b, h, r].tolist()
                assert row == sorted(set(row)) and all(0 <= c < NC for c in row)
                if forced:
                    assert int(own[r]) in row
                free = [c for c in row if not (forced and c == int(own[r]))]
                rest = [c for c in range(NC) if c not in row]
                if free and rest:  # every freely chosen block scores at least as high as any left out
                    assert score[b, h, r, free].min() >= score[b, h, r, rest].max() - 1e-6
    assert lists_are_top_k(pq, pk, k, index, count, forced=own if forced else None, shared_heads=shared)


def test_lists_are_top_k_refuses_lists_that_are_not():
    """The check ``auto`` runs on the kernel's lists: true of ``topk_blocks``' own, false of lists of the
    wrong shape or count, unsorted, repeated, out of range, missing the forced block, or leaving out a
    block that scores higher than one kept; and the PyTorch selection scores in fp32 under autocast."""
    g = torch.Generator().manual_seed(7)
    pq, pk = torch.randn(2, 3, 4, 16, generator=g), torch.randn(2, 3, 10, 16, generator=g)
    own = torch.arange(4) + 6
    index, count = topk_blocks(pq, pk, 3, forced=own)
    assert lists_are_top_k(pq, pk, 3, index, count, forced=own)
    score = torch.einsum("bhqd,bhcd->bhqc", pq.double(), pk.double()).softmax(-1)[0, 0, 0]
    row = index[0, 0, 0].tolist()
    free = [c for c in row if c != 6]
    worse = next(c for c in score.argsort().tolist() if c not in row)  # the lowest-scoring block left out
    swapped = sorted([worse] + [c for c in row if c != min(free, key=lambda c: score[c])])
    bad = {
        "shape": (index[..., :2], count),
        "count": (index, count - 1),
        "order": (index.flip(-1), count),
        "repeat": (index.clone().index_fill_(-1, torch.tensor([1]), 0).sort(-1).values, count),
        "range": (index + 10, count),
        "forced": (index.masked_fill(index == 6, 0).sort(-1).values, count),
        "score": (index.clone().index_put_((torch.tensor(0), torch.tensor(0), torch.tensor(0)), torch.tensor(swapped)), count),
    }
    for why, (idx, cnt) in bad.items():
        assert not lists_are_top_k(pq, pk, 3, idx, cnt, forced=own), why
    shared = topk_blocks(pq, pk, 3, forced=own, shared_heads=True)
    assert lists_are_top_k(pq, pk, 3, *shared, forced=own, shared_heads=True)
    assert not lists_are_top_k(pq, pk, 3, *shared, forced=own)  # one list where one per head is due
    close = torch.ones(1, 1, 10, 16) * (1 + 1e-4 * torch.arange(10.0))[:, None]  # apart by less than bf16 resolves
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert topk_blocks(torch.ones(1, 1, 1, 16), close, 3)[0].tolist() == [[[[7, 8, 9]]]]


@needs_triton
def test_triton_topk_matches_torch_and_refuses_what_it_cannot_hold():
    """The fused kernel picks the same lists as the PyTorch path on random scores (no ties), also with
    candidates past one power of two and a strided pooled-key view; it names the limits it refuses."""
    from worldkit_kernels.topk_triton import MAX_CANDIDATES, topk_blocks_triton

    g = torch.Generator().manual_seed(3)
    pq = torch.randn(1, 3, 3, 32, generator=g)
    pk = torch.randn(1, 40, 3, 32, generator=g).transpose(1, 2)  # (B, H, NC, D), not contiguous
    own = torch.arange(3) + 37
    for shared in (False, True):
        for k in (1, 7, 40):
            want = topk_blocks(pq, pk, k, forced=own, shared_heads=shared)
            got = topk_blocks_triton(pq, pk, k, forced=own, shared_heads=shared)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    long_q, long_k = torch.randn(1, 1, 2, 16, generator=g), torch.randn(1, 1, 300, 16, generator=g)  # 512 slots
    for k in (5, 150):
        assert torch.equal(topk_blocks_triton(long_q, long_k, k)[0], topk_blocks(long_q, long_k, k)[0])
    tied = torch.ones(1, 1, 9, 16)  # every candidate scores the same: the lowest ones are kept
    assert topk_blocks_triton(pq[:1, :1, :1, :16], tied, 3)[0].tolist() == [[[[0, 1, 2]]]]
    with pytest.raises(ValueError, match="head dim that is a power of two"):
        topk_blocks_triton(pq[..., :24], pk[..., :24], 3)
    with pytest.raises(ValueError, match=f"at most {MAX_CANDIDATES} candidates"):
        topk_blocks_triton(pq[..., :16], torch.zeros(1, 1, 1, 16).expand(1, 3, MAX_CANDIDATES + 1, 16), 3)
    with pytest.raises(ValueError, match="pooled_k must be"):
        topk_blocks_triton(pq, pk[:, :2], 3)
    with pytest.raises(ValueError, match="forced must be"):
        topk_blocks_triton(pq, pk, 3, forced=own[:2])
    with pytest.raises(ValueError, match="on one device"):
        topk_blocks_triton(pq, pk.to("meta"), 3)


@needs_triton
def test_triton_topk_on_the_cpu_needs_the_interpreter(monkeypatch):
    from worldkit_kernels.topk_triton import topk_blocks_triton

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        topk_blocks_triton(torch.zeros(1, 1, 1, 16), torch.zeros(1, 1, 4, 16), 2)


@needs_triton
def test_auto_selection_keeps_the_faster_per_problem_class(monkeypatch):
    """``auto_impl`` checks the kernel's lists, times both selections once per problem class and keeps the
    kernel only when clearly faster; PyTorch without timing where the kernel cannot take the problem or
    off CUDA; PyTorch when the kernel fails or its lists are wrong; ``topk_blocks`` selects with the
    kept one."""
    fused = importlib.import_module("worldkit_kernels.topk_triton")
    for name in ("_choice", "_choice_timings", "_choice_failures"):
        monkeypatch.setattr(fused, name, {})
    last = []
    for name, label in (("topk_blocks_torch", "topk_blocks"), ("topk_blocks_triton", "topk_blocks_triton")):
        def traced(*a, _run=getattr(fused, name), _name=label, **kw):
            last.append(_name)
            return _run(*a, **kw)
        monkeypatch.setattr(fused, name, traced)
    ms = {"topk_blocks": 2.0, "topk_blocks_triton": 1.0}
    timed = []

    def timer(fn):  # runs the selection and reports a made-up time for whichever ran
        fn()
        timed.append(last[-1])
        return ms[last[-1]]

    g = torch.Generator().manual_seed(5)
    pq, pk = torch.randn(1, 2, 3, 16, generator=g), torch.randn(1, 2, 9, 16, generator=g)
    own = torch.arange(3) + 6
    assert fused.auto_impl(pq, pk, 4, forced=own, timer=timer) == "triton"
    assert sorted(timed) == ["topk_blocks", "topk_blocks_triton"]
    (key, times), = fused._choice_timings.items()
    assert times == {"torch": 2.0, "triton": 1.0} and fused._choice[key] == "triton" and not fused._choice_failures
    assert fused.auto_impl(pq, pk[:, :, :7], 4, forced=own, timer=timer) == "triton" and len(timed) == 2  # same class
    ms.update(topk_blocks_triton=1.9)  # not under 0.9x: PyTorch (shared lists are another class)
    assert fused.auto_impl(pq, pk, 4, forced=own, shared_heads=True, timer=timer) == "torch" and len(timed) == 4
    ms.update(topk_blocks=0.5)  # 17 candidates: the next power of two, another class
    assert fused.auto_impl(pq, torch.randn(1, 2, 17, 16, generator=g), 4, timer=timer) == "torch"
    assert len(fused._choice) == 3 and len(timed) == 6

    n = len(timed)
    monkeypatch.setattr(fused, "topk_blocks_triton", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("no kernel")))
    wide = torch.randn(1, 2, 33, 16, generator=g)
    assert fused.auto_impl(pq, wide, 4, timer=timer) == "torch" and timed[n:] == ["topk_blocks"]  # the kernel failed
    key64 = next(k for k in fused._choice if k[6] == 64)
    assert fused._choice_timings[key64]["triton"] == float("inf") and "no kernel" in fused._choice_failures[key64]
    wrong = topk_blocks(pq, pk, 4, forced=own)[0].flip(-1), torch.full((1, 2, 3), 4)  # descending: not top-K lists
    monkeypatch.setattr(fused, "topk_blocks_triton", lambda *a, **kw: wrong)
    assert fused.auto_impl(pq, wide[:, :1].expand(1, 2, 33, 16), 4, forced=own, timer=timer) == "torch"
    assert any("failed the check" in why for why in fused._choice_failures.values()) and timed[-1] == "topk_blocks"

    n = len(timed)
    assert fused.auto_impl(pq[..., :8], pk[..., :8], 4, timer=timer) == "torch"  # head dim 8: no kernel, no timing
    assert fused.auto_impl(pq, pk, 4, forced=own) == "torch"  # off CUDA without a timer: PyTorch, untimed
    monkeypatch.setattr(fused, "MAX_CANDIDATES", 8)
    assert fused.auto_impl(pq, pk, 4, forced=own, timer=timer) == "torch"  # too many candidates
    assert len(timed) == n
    monkeypatch.setattr(fused, "MAX_CANDIDATES", 2048)
    want = topk_blocks(pq, pk, 4, forced=own)
    monkeypatch.setattr(fused, "topk_blocks_triton", lambda *a, **kw: want)
    topk = importlib.import_module("worldkit_kernels.topk")  # the dispatcher, as it runs auto's choice on CUDA
    monkeypatch.setattr(topk, "chosen_impl", lambda *a, **kw: "triton")
    assert topk.topk_blocks(pq, pk, 4, forced=own) is want  # the kept one selects
    monkeypatch.setattr(topk, "chosen_impl", lambda *a, **kw: "torch")
    assert torch.equal(topk.topk_blocks(pq, pk, 4, forced=own)[0], want[0])


def test_the_selection_dispatcher_picks_an_implementation(monkeypatch):
    """``topk_blocks``' impl: torch, the PyTorch ops; auto off CUDA, the PyTorch ops (nothing timed);
    triton, the fused kernel up to ``MAX_CANDIDATES`` candidates and the PyTorch ops past them; any other
    impl refused."""
    import worldkit_kernels
    from worldkit_kernels.topk import chosen_impl

    g = torch.Generator().manual_seed(2)
    pq, pk = torch.randn(1, 2, 3, 16, generator=g), torch.randn(1, 2, 9, 16, generator=g)
    assert chosen_impl(pq, pk, 4, impl="torch") == "torch" and chosen_impl(pq, pk, 4) == "torch"
    assert torch.equal(worldkit_kernels.topk_blocks(pq, pk, 4)[0], topk_blocks(pq, pk, 4)[0])
    with pytest.raises(ValueError, match="impl must be"):
        worldkit_kernels.topk_blocks(pq, pk, 4, impl="cuda")
    if HAS_TRITON:
        fused = importlib.import_module("worldkit_kernels.topk_triton")
        assert chosen_impl(pq, pk, 4, impl="triton") == "triton"
        monkeypatch.setattr(fused, "MAX_CANDIDATES", 8)
        assert chosen_impl(pq, pk, 4, impl="triton") == "torch"


@needs_triton
def test_per_call_timing_times_calls_back_to_back(monkeypatch):
    """``_per_call_ms``: one warm-up call, then ``repeats`` runs of ``calls`` calls between two events on
    the given device; the median of the per-call times."""
    fused = importlib.import_module("worldkit_kernels.topk_triton")
    clock, calls, devices = [0.0], [], []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = clock[0]

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return end.at - self.at

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "device", lambda d: devices.append(d) or contextlib.nullcontext())
    costs = iter([100.0] + [3.0] * 5 + [1.0] * 5 + [2.0] * 5)  # the warm-up, then three runs of five calls

    def fn():
        calls.append(1)
        clock[0] += next(costs)

    assert fused._per_call_ms(fn, "cuda:1", calls=5, repeats=3) == 2.0
    assert len(calls) == 16 and devices == ["cuda:1"]


def test_resolve_top_k():
    assert resolve_top_k(0.25, 12) == 3
    assert resolve_top_k(0.25, 13) == 4  # rounded up
    assert resolve_top_k(1.0, 7) == 7
    assert resolve_top_k(5, 3) == 3
    assert resolve_top_k(2, 10) == 2


def _two_row_problem():
    """q (1, 2, 20, 16) and a pool of 4 slots of 16 rows, two query blocks reading two slots each."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 20, 16, generator=g, requires_grad=True)
    k = torch.randn(1, 4, 2, 16, 16, generator=g, requires_grad=True)
    v = torch.randn(1, 4, 2, 16, 16, generator=g, requires_grad=True)
    index = torch.tensor([[0, 2], [1, 3]], dtype=torch.int32).expand(1, 2, 2, 2).contiguous()
    count = torch.full((1, 2, 2), 2, dtype=torch.int32)
    return q, k, v, index, count


@needs_triton
def test_custom_op_passes_opcheck():
    """``worldkit::pbsa_fwd`` (and its backward op through autograd) as torch.compile and AOT dispatch
    see it: schema, autograd registration, fake tensors, dynamic-shape AOT dispatch."""
    mod = importlib.import_module("worldkit_kernels.pbsa_triton.op")
    q, k, v, index, count = _two_row_problem()
    block_len = torch.full((1, 4), 16, dtype=torch.int32)  # (B, NS): the last slot short
    block_len[0, -1] = 5
    assert mod.pbsa_fwd is not None
    result = torch.library.opcheck(torch.ops.worldkit.pbsa_fwd.default, (q, k, v, index, count, block_len, 0.25))
    assert set(result.values()) == {"SUCCESS"}, result


@needs_triton
def test_eager_calls_skip_the_op_dispatch_and_match_it(monkeypatch):
    """Eager calls run the op's forward and backward through a plain autograd Function (less host work:
    no op dispatch, the ragged lists packed once), the same outputs and gradients as the op, bit for bit,
    through out, lse or both; once differentiable, as the op; under a dispatch mode (fake tensors), the
    op. (torch.compile tracing the op: the next test.)"""
    mod = importlib.import_module("worldkit_kernels.pbsa_triton.op")
    lists = importlib.import_module("worldkit_kernels.pbsa_triton.lists")
    q, k, v, index, count = _two_row_problem()
    block_len = torch.full((1, 4), 16, dtype=torch.int32)
    block_len[0, -1] = 5

    def run(fn, use):
        qq, kk, vv = (t.detach().clone().requires_grad_() for t in (q, k, v))
        out, lse = fn(qq, kk, vv)
        loss = {"out": out.sum(), "lse": lse.sum(), "both": out.sum() + 2 * lse.sum()}[use]
        return type(out.grad_fn).__name__, [out, lse, *torch.autograd.grad(loss, (qq, kk, vv))]

    packs, pack = [], lists._pack
    monkeypatch.setattr(lists, "_pack", lambda *a: packs.append(1) or pack(*a))
    for use in ("out", "lse", "both"):
        eager_fn, eager = run(lambda *qkv: mod.pbsa_triton(*qkv, index, count, block_len), use)
        assert len(packs) == 1  # the backward reads the lists the forward packed
        op_fn, op = run(lambda *qkv: mod.pbsa_fwd(*qkv, index, count, block_len, 16 ** -0.5), use)
        assert len(packs) == 3  # the ops pack again
        packs.clear()
        assert eager_fn == "_EagerBackward" and "pbsa_fwd" in op_fn
        assert all(torch.equal(a, b) for a, b in zip(eager, op)), use
    qq = q.detach().clone().requires_grad_()
    out, _ = mod.pbsa_triton(qq, k, v, index, count, block_len)
    (g,) = torch.autograd.grad((out * out).sum(), qq, create_graph=True)  # dout = 2 out, itself differentiable
    assert g.requires_grad  # part of the graph, so a second derivative is refused, not silently zero
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():  # under a dispatch mode (fake tensors, make_fx): the op and its fake
        fq, fk, fv = torch.empty(q.shape), torch.empty(k.shape), torch.empty(v.shape)
        fout, flse = mod.pbsa_triton(fq, fk, fv, torch.zeros(index.shape, dtype=torch.int32),
                                     torch.zeros(count.shape, dtype=torch.int32))
        assert type(fout).__name__ == "FakeTensor" and fout.shape == q.shape and flse.shape == q.shape[:3]


@needs_triton
def test_compiled_code_calls_the_custom_op():
    """Under torch.compile (AOT autograd, one graph) PBSA is traced as ``worldkit::pbsa_fwd``, and the
    compiled function's loss and gradients equal the eager ones."""
    mod = importlib.import_module("worldkit_kernels.pbsa_triton.op")
    q, k, v, index, count = _two_row_problem()
    block_len = torch.full((1, 4), 16, dtype=torch.int32)
    block_len[0, -1] = 5
    graphs = []

    def backend(gm, inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.backends.debugging.aot_eager(gm, inputs)

    def loss(q, k, v):
        out, lse = mod.pbsa_triton(q, k, v, index, count, block_len)
        return (out * out).sum() + lse.sum()

    compiled = torch.compile(loss, backend=backend, fullgraph=True)
    got = compiled(q, k, v)
    want = loss(q, k, v)
    assert torch.allclose(got, want) and len(graphs) == 1 and "worldkit.pbsa_fwd" in graphs[0]
    for a, b in zip(torch.autograd.grad(got, (q, k, v)), torch.autograd.grad(want, (q, k, v))):
        assert torch.allclose(a, b, atol=1e-6)
    torch._dynamo.reset()


@needs_triton
def test_backward_skips_the_lse_gradient_it_is_not_given(monkeypatch):
    """Gradients through out alone, lse alone, or both match the fp64 reference; when lse is unused its
    gradient is not materialised as zeros (the delta kernel is told there is none)."""
    mod = importlib.import_module("worldkit_kernels.pbsa_triton.backward")
    given_dlse = []
    delta = mod._delta
    monkeypatch.setattr(mod, "_delta", lambda do, out, dlse: (given_dlse.append(dlse is not None), delta(do, out, dlse))[1])
    q, k, v, index, count = _two_row_problem()

    def grads(fn, cast, use):
        qq, kk, vv = (t.detach().to(cast).requires_grad_() for t in (q, k, v))
        out, lse = fn(qq, kk, vv, index, count, None)
        loss = {"out": out.sum(), "lse": lse.sum(), "both": out.sum() + 2 * lse.sum()}[use]
        got = torch.autograd.grad(loss, (qq, kk, vv), allow_unused=True)
        return [torch.zeros_like(t) if d is None else d for d, t in zip(got, (qq, kk, vv))]

    for use in ("out", "lse", "both"):
        got = grads(lambda *a: pbsa_attention_with_lse(*a, impl="triton"), torch.float32, use)
        want = grads(reference, torch.float64, use)
        assert all(torch.allclose(a.double(), b, atol=1e-5) for a, b in zip(got, want)), use
    assert given_dlse == [False, True, True]


@needs_triton
def test_kernel_choices_say_what_the_triton_paths_kept(monkeypatch):
    """``kernel_choices``: each PBSA problem class with the configuration kept (tuned, with every
    candidate's time, a failed one null; or the untuned default) and each selection class with the
    implementation kept, both times and why the kernel was not timed."""
    from worldkit_kernels import choices, topk_triton
    from worldkit_kernels.pbsa_triton import tuner

    key = ("fwd", 128, 128, torch.bfloat16, True, 32, 64, 512, 16, False, True, "NVIDIA H100")
    plain = ("dq", 64, 32, torch.float16, False, 8, 16, 64, 2, True, True, "NVIDIA H100")
    fast, slow = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3, SPLIT=2), dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    monkeypatch.setattr(tuner, "_tuned", {key: fast})
    monkeypatch.setattr(tuner, "_timings", {key: [(slow, 0.9), (fast, 0.4), (slow | dict(num_stages=2), float("inf"))]})
    monkeypatch.setattr(tuner, "_fits", {plain: slow})
    sel = ("cuda:0", torch.bfloat16, 1, 12, True, 37, 512, 128, True, torch.bfloat16)
    monkeypatch.setattr(topk_triton, "_choice", {sel: "torch"})
    monkeypatch.setattr(topk_triton, "_choice_timings", {sel: {"torch": 0.75, "triton": float("inf")}})
    monkeypatch.setattr(topk_triton, "_choice_failures", {sel: "RuntimeError: no kernel"})
    got = choices.kernel_choices()
    assert got["pbsa"] == [
        {"class": "dq BLK=64 D=32 float16 shared NQB<=8 K<=16 NS<=64 BH<=2 on NVIDIA H100", "kept": "M64 N64 w4 s3", "tuned": False},
        {"class": "fwd BLK=128 D=128 bfloat16 per-head NQB<=32 K<=64 NS<=512 BH<=16 query-tail on NVIDIA H100",
         "kept": "M128 N64 w8 s3 x2", "tuned": True,
         "timings_ms": {"M64 N64 w4 s3": 0.9, "M128 N64 w8 s3 x2": 0.4, "M64 N64 w4 s2": None}},
    ]
    q, k, index = torch.zeros(1, 2, 8, 16), torch.zeros(1, 4, 2, 4, 16), torch.zeros(1, 2, 2, 3, dtype=torch.int32)
    assert choices.problem_label(tuner.problem("fwd", q, k, index, True, True)) == (  # the key the tuner makes
        "fwd BLK=4 D=16 float32 per-head NQB<=2 K<=4 NS<=4 BH<=2 on cpu")
    monkeypatch.setattr(tuner, "_fits", {plain: slow, ("k", 1): dict(BLOCK_N=64, num_warps=4)})  # a key of a test
    assert {"class": "('k', 1)", "kept": "BLOCK_N=64 num_warps=4", "tuned": False} in choices.kernel_choices()["pbsa"]
    assert got["selection"] == [{
        "class": "1 x 12 heads (one shared list), 37 query blocks, up to 512 candidates, head dim 128, own block forced, "
                 "bfloat16 on cuda:0",
        "kept": "torch", "timings_ms": {"torch": 0.75, "triton": None}, "kernel_failed": "RuntimeError: no kernel"}]


def test_the_sparse_forcing_plugins_report_the_kernel_choices_of_a_stage(monkeypatch):
    """pbsa and local_window give each stage ``kernels.json`` (``Plugin.report``) once the Triton paths
    ran; nothing before (a CPU run)."""
    from worldkit import registry
    from worldkit_kernels import choices

    plugins = [registry.get("attention", "pbsa"), registry.get("selector", "local_window")]
    monkeypatch.setattr(choices, "kernel_choices", lambda: {"pbsa": [], "selection": []})
    assert [p.report() for p in plugins] == [{}, {}]
    kept = {"pbsa": [{"class": "c", "kept": "M64 N64 w4 s3", "tuned": False}], "selection": []}
    monkeypatch.setattr(choices, "kernel_choices", lambda: kept)
    assert [p.report() for p in plugins] == [{"kernels.json": kept}] * 2
    assert registry.get("attention", "sdpa").report() == {}


def test_kernel_choices_import_no_triton():
    code = ("import sys\nfrom worldkit_kernels.choices import kernel_choices\n"
            "print(kernel_choices(), 'triton' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "{'pbsa': [], 'selection': []} False"
