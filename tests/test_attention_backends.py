"""Attention backends and block selectors on random KV views: PBSA against dense SDPA (outputs and
gradients w.r.t. q, the chunk's k/v and the view's pool), LocalWindow and AllBlocks properties."""
import importlib
import os
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"  # the Triton path runs on the CPU through the interpreter

from importlib.metadata import entry_points

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from worldkit.interfaces import AttentionBackend, BlockIndex, BlockSelector, KVView
from worldkit_kernels import pool_blocks
from worldkit_plugins.baselines.sdpa import SDPA, dense_mask_from_index
from worldkit_plugins.baselines.selector import AllBlocks
from worldkit_plugins.sparse_forcing.local_window import LocalWindow
from worldkit_plugins.sparse_forcing.pbsa import PBSA

try:  # the kernels must have been decorated under the interpreter (not imported earlier without it)
    _kernels = importlib.import_module("worldkit_kernels.pbsa_triton.forward")
    HAS_TRITON = type(_kernels._fwd_kernel).__name__ == "InterpretedFunction"
except ImportError:
    HAS_TRITON = False


def make_view(B, H, BLK, D, NS, n_sink, n_persistent, n_local, seed, dtype=torch.float64) -> KVView:
    """A random slot pool with disjoint sink / persistent / local slot sets (unused slots left over)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(NS, generator=g)
    a, b = n_sink, n_sink + n_persistent
    return KVView(
        k=torch.randn(B, NS, H, BLK, D, generator=g, dtype=torch.float64).to(dtype),  # (B, NS, H, BLK, D)
        v=torch.randn(B, NS, H, BLK, D, generator=g, dtype=torch.float64).to(dtype),
        slot_pos=torch.zeros(B, NS),
        slot_frame=torch.zeros(B, NS, dtype=torch.long),
        slot_block=torch.zeros(B, NS, dtype=torch.long),
        always=perm[:b],
        local=perm[b : b + n_local],
        query_pos=0.0,
        regions={"sink": perm[:a], "persistent": perm[a:b]},
    )


def random_index(B, Hs, NQB, NC, K, seed) -> BlockIndex:
    """Random sorted local lists over NC candidates, padded with -1 (some rows may be empty)."""
    g = torch.Generator().manual_seed(seed)
    local = torch.full((B, Hs, NQB, K), -1, dtype=torch.long)
    count = torch.randint(0, min(K, NC) + 1, (B, Hs, NQB), generator=g)
    for b in range(B):
        for h in range(Hs):
            for r in range(NQB):
                n = int(count[b, h, r])
                local[b, h, r, :n] = torch.randperm(NC, generator=g)[:n].sort().values
    return BlockIndex(local=local, count=count)


views = st.fixed_dictionaries(
    dict(
        B=st.integers(1, 2),
        H=st.integers(1, 3),
        BLK=st.sampled_from([1, 2, 4]),
        NQB=st.integers(1, 3),
        tail=st.integers(0, 1),
        n_sink=st.integers(0, 2),
        n_persistent=st.integers(0, 3),
        n_local=st.integers(0, 4),
        spare=st.integers(0, 2),
        selection=st.sampled_from(["none", "random", "random_shared", "local_window", "local_window_shared",
                                   "local_window_keep_chunk"]),
        seed=st.integers(0, 2**16),
    )
)


def build(s, D=8, dtype=torch.float64):
    """View, chunk q/k/v and block index for a drawn case."""
    NS = s["n_sink"] + s["n_persistent"] + s["n_local"] + s["spare"]
    B, H, BLK = s["B"], s["H"], s["BLK"]
    Tq = max(1, s["NQB"] * BLK - s["tail"])
    NQB = -(-Tq // BLK)
    view = make_view(B, H, BLK, D, NS, s["n_sink"], s["n_persistent"], s["n_local"], s["seed"], dtype)
    g = torch.Generator().manual_seed(s["seed"] + 1)
    q, k, v = (torch.randn(B, H, Tq, D, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
    NC = s["n_local"] + NQB
    sel = s["selection"]
    if sel == "none":
        index = None
    elif sel.startswith("random"):
        index = random_index(B, 1 if sel.endswith("shared") else H, NQB, NC, NC, s["seed"] + 2)
    else:
        selector = LocalWindow(LocalWindow.Config(top_k=0.5, shared_heads=sel.endswith("shared"),
                                                  keep_chunk=sel.endswith("keep_chunk")))
        pooled_k = torch.cat([view.k[:, view.local].mean(3).transpose(1, 2), pool_blocks(k, BLK)], 2)
        index = selector.select(pool_blocks(q, BLK), pooled_k, torch.arange(NQB) + s["n_local"])
    return view, (q, k, v), index


def outputs_and_grads(backend, view, qkv, index):
    """Output and gradients w.r.t. q, k, v, view.k, view.v of a fixed random projection of the output."""
    q, k, v = (t.detach().clone().requires_grad_() for t in qkv)
    pk, pv = view.k.detach().clone().requires_grad_(), view.v.detach().clone().requires_grad_()
    out = backend.attend(q, k, v, KVView(**{**view.__dict__, "k": pk, "v": pv}), index)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * w).sum(), (q, k, v, pk, pv))
    return (out, *grads)


def assert_parity(a, b, tol):
    for name, x, y in zip(["out", "dq", "dk", "dv", "dpool_k", "dpool_v"], a, b):
        assert torch.isfinite(x).all(), name
        err = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
        assert err <= tol, (name, err)


@settings(max_examples=60, deadline=None)
@given(s=views)
def test_pbsa_matches_sdpa(s):
    view, qkv, index = build(s)
    got = outputs_and_grads(PBSA(PBSA.Config(impl="torch")), view, qkv, index)
    ref = outputs_and_grads(SDPA(), view, qkv, index)
    assert_parity(got, ref, 1e-10)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton interpreter not available")
@settings(max_examples=6, deadline=None)
@given(s=views)
def test_pbsa_triton_matches_sdpa(s):
    s = dict(s, BLK=4, B=1, H=min(s["H"], 2))
    view, qkv, index = build(s, D=16, dtype=torch.float32)
    got = outputs_and_grads(PBSA(PBSA.Config(impl="triton")), view, qkv, index)
    ref = outputs_and_grads(SDPA(), view, qkv, index)
    assert_parity(got, ref, 1e-4)


@pytest.mark.parametrize("impl", ["torch", pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="no Triton"))])
def test_pbsa_attends_in_the_chunks_dtype_over_a_wider_cache(impl):
    """Mixed precision: the chunk's q/k/v arrive in half precision, the cache keeps the model's fp32;
    the backend reads the pool in the chunk's dtype (the Triton kernels take one dtype)."""
    s = dict(B=1, H=2, BLK=4, NQB=2, tail=1, n_sink=1, n_persistent=1, n_local=2, spare=0, selection="random", seed=5)
    view, (q, k, v), index = build(s, D=16, dtype=torch.float32)
    half = [t.half() for t in (q, k, v)]
    out = PBSA(PBSA.Config(impl=impl)).attend(*half, view, index)
    ref = SDPA().attend(q, k, v, view, index)
    assert out.dtype == torch.float16 and (out.float() - ref).abs().max().item() < 2e-2


def test_allblocks_pbsa_matches_sdpa_and_no_view():
    assert AllBlocks().select(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 5, 4), torch.arange(2)) is None
    s = dict(B=2, H=2, BLK=4, NQB=3, tail=1, n_sink=1, n_persistent=2, n_local=3, spare=1, selection="none", seed=3)
    view, qkv, _ = build(s)
    assert_parity(outputs_and_grads(PBSA(), view, qkv, None), outputs_and_grads(SDPA(), view, qkv, None), 1e-10)
    empty = make_view(2, 2, 4, 8, 0, 0, 0, 0, 0)  # an empty cache (first chunk)
    assert_parity(outputs_and_grads(PBSA(), empty, qkv, None), outputs_and_grads(SDPA(), empty, qkv, None), 1e-10)
    q, k, v = qkv
    index = random_index(2, 2, 3, 3, 3, 5)
    assert torch.allclose(PBSA().attend(q, k, v, None, index), SDPA().attend(q, k, v, None, index), atol=1e-10)
    assert torch.allclose(PBSA().attend(q, k, v, None, None), SDPA().attend(q, k, v, None, None), atol=1e-10)


def test_dense_mask_from_index_by_hand():
    """Two cached local blocks, one sink, one persistent, a chunk of two blocks (the last short)."""
    view = make_view(1, 1, 2, 4, 5, 1, 1, 2, 0)
    index = BlockIndex(local=torch.tensor([[[[1, 2], [3, -1]]]]), count=torch.tensor([[[2, 1]]]))
    mask = dense_mask_from_index(view, index, Tq=3, BLK=2)  # (1, 1, 3, 4 * 2 + 3)
    # keys: sink(2) persistent(2) local0(2) local1(2) own0(2) own1(1)
    row0 = [1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0]  # query block 0 reads local1 and own0
    row1 = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1]  # query block 1 reads own1
    assert mask[0, 0].int().tolist() == [row0, row0, row1]


def test_local_window_properties():
    g = torch.Generator().manual_seed(0)
    B, H, NQB, NL, D = 2, 3, 4, 8, 16
    pq = torch.randn(B, H, NQB, D, generator=g)  # (B, H, NQB, D)
    pk = torch.randn(B, H, NL + NQB, D, generator=g)  # (B, H, NC, D)
    own = torch.arange(NQB) + NL
    idx = LocalWindow().select(pq, pk, own)  # default: 25 % of 12 candidates, per head, own kept
    assert idx.local.shape == (B, H, NQB, 3) and (idx.count == 3).all()
    assert (idx.local == own.view(1, 1, NQB, 1)).any(-1).all()
    assert (idx.local.diff(dim=-1) > 0).all()
    shared = LocalWindow(LocalWindow.Config(top_k=5, shared_heads=True)).select(pq, pk, own)
    assert shared.local.shape == (B, 1, NQB, 5) and (shared.count == 5).all()
    free = LocalWindow(LocalWindow.Config(top_k=1, keep_own=False)).select(pq, pk, own)
    best = torch.einsum("bhqd,bhcd->bhqc", pq, pk).argmax(-1, keepdim=True)  # softmax keeps the argmax
    assert torch.equal(free.local, best)
    for bad in (0, 0.0, 1.5, -2):
        with pytest.raises(ValidationError):
            LocalWindow.Config(top_k=bad)
    with pytest.raises(ValidationError):
        LocalWindow.Config(top_k=0.25, window=3)
    assert LocalWindow.Config().impl == "auto"
    with pytest.raises(ValidationError, match="'auto', 'torch' or 'triton'"):
        LocalWindow.Config(impl="cuda")


def test_local_window_keep_chunk_reads_the_whole_chunk_and_top_k_of_the_cache():
    g = torch.Generator().manual_seed(1)
    B, H, NQB, NL, D = 2, 3, 4, 8, 16
    pq, pk = torch.randn(B, H, NQB, D, generator=g), torch.randn(B, H, NL + NQB, D, generator=g)
    own = torch.arange(NQB) + NL
    idx = LocalWindow(LocalWindow.Config(top_k=0.25, keep_chunk=True)).select(pq, pk, own)
    assert idx.local.shape == (B, H, NQB, 2 + NQB) and (idx.count == 2 + NQB).all()  # 25 % of the 8 cached, + 4
    assert (idx.local[..., 2:] == own).all() and (idx.local[..., :2] < NL).all()
    assert (idx.local.diff(dim=-1) > 0).all()
    scores = torch.einsum("bhqd,bhcd->bhqc", pq, pk[:, :, :NL])
    best = scores.topk(2, dim=-1).indices.sort(-1).values
    assert torch.equal(idx.local[..., :2], best)  # the cached blocks it keeps are the best scoring
    first = LocalWindow(LocalWindow.Config(top_k=0.25, keep_chunk=True)).select(pq, pk[:, :, NL:], own - NL)
    assert torch.equal(first.local, (own - NL).expand(B, H, NQB, NQB))  # an empty cache: the chunk alone


def test_local_window_fused_selection_picks_the_same_blocks(monkeypatch):
    """``impl: triton`` (the fused kernel, here under the interpreter) selects what the PyTorch ops select."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(1)
    pq, pk = torch.randn(1, 2, 3, 16, generator=g), torch.randn(1, 2, 9, 16, generator=g)
    own = torch.arange(3) + 6
    for shared, keep_chunk, NL in [(False, False, 6), (True, False, 6), (False, True, 6), (True, True, 6), (False, True, 0)]:
        cfg = dict(top_k=4, shared_heads=shared, keep_chunk=keep_chunk)  # keep_chunk: a slice of the candidates
        pk_, own_ = pk[:, :, 6 - NL:], own - 6 + NL  # NL 0: an empty cache
        want = LocalWindow(LocalWindow.Config(**cfg, impl="torch")).select(pq, pk_, own_)
        got = LocalWindow(LocalWindow.Config(**cfg, impl="triton")).select(pq, pk_, own_)
        assert torch.equal(got.local, want.local) and torch.equal(got.count, want.count)
    import worldkit_kernels.topk_triton as fused

    called = []
    monkeypatch.setattr(fused, "MAX_CANDIDATES", 8)  # a window longer than the kernel holds: PyTorch selects
    monkeypatch.setattr(fused, "topk_blocks_triton", lambda *a, **k: called.append(1))
    got = LocalWindow(LocalWindow.Config(top_k=4, impl="triton")).select(pq, pk, own)
    assert not called and torch.equal(got.local, LocalWindow(LocalWindow.Config(top_k=4)).select(pq, pk, own).local)
    monkeypatch.setattr(fused, "auto_impl", lambda *a, **k: called.append(1))
    got = LocalWindow(LocalWindow.Config(top_k=4, impl="auto")).select(pq, pk, own)
    want = LocalWindow(LocalWindow.Config(top_k=4, impl="torch")).select(pq, pk, own)
    assert not called and torch.equal(got.local, want.local)  # auto on the CPU: the PyTorch ops, nothing timed


def test_local_window_records_no_graph():
    """Selection is indices only: under autograd it saves nothing for a backward."""
    pq = torch.randn(1, 2, 3, 16, requires_grad=True)
    pk = torch.randn(1, 2, 9, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        got = LocalWindow(LocalWindow.Config(top_k=4)).select(pq * 1.0, pk * 1.0, torch.arange(3) + 6)
        assert not saved and got.local.shape == (1, 2, 3, 4)
        (pq * pq).sum()
        assert saved  # the hook does see what autograd saves


def test_local_window_auto_on_the_cpu_imports_no_triton():
    code = ("import sys, torch\n"
            "from worldkit_plugins.sparse_forcing.local_window import LocalWindow\n"
            "got = LocalWindow(LocalWindow.Config(top_k=2)).select(torch.randn(1, 2, 3, 16), torch.randn(1, 2, 9, 16), "
            "torch.arange(3) + 6)\n"
            "print(tuple(got.local.shape), 'triton' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["(1,", "2,", "3,", "2)", "False"]


def test_plugins_registered_and_configurable():
    groups = {"worldkit.attention": AttentionBackend, "worldkit.selector": BlockSelector}
    want = {"sdpa": SDPA, "pbsa": PBSA, "all": AllBlocks, "local_window": LocalWindow}
    found = set()
    for group, base in groups.items():
        for ep in entry_points(group=group):
            if ep.name in want:
                found.add(ep.name)
                cls = ep.load()
                assert cls is want[ep.name] and issubclass(cls, base)
                assert cls.__doc__.strip().splitlines()[0]
                cls(cls.Config())
    assert found == set(want)
    assert PBSA.Config(impl="triton").impl == "triton"
    with pytest.raises(ValidationError):
        PBSA.Config(impl="cuda")


@settings(max_examples=30, deadline=None)
@given(s=views)
def test_pbsa_inference_fast_path_matches_sdpa(s):
    """fp32 without autograd takes the fused CPU kernel for the sink + persistent part."""
    view, (q, k, v), index = build(s, dtype=torch.float32)
    with torch.no_grad():
        got = PBSA(PBSA.Config(impl="torch")).attend(q, k, v, view, index)
        ref = SDPA().attend(q, k, v, view, index)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
