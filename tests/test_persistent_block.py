"""Sparse Forcing's persistent-block memory: P <- TopC(P u E), sink kept, positions bounded."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_cache import spec, tagged_chunk
from worldkit_plugins.sparse_forcing.persistent_block import PersistentBlock, score_candidates


def make(sink=1, window=4, blocks=3, **kw):
    return PersistentBlock(PersistentBlock.Config(sink_frames=sink, window_frames=window, persistent_blocks=blocks, **kw))


def random_chunk(s, first_frame, g):
    """Tagged K/V (so contents can be traced) plus random key directions and pooled queries."""
    k, v, _ = tagged_chunk(s, first_frame)
    noise = torch.randn(k.shape, generator=g)
    k = k.clone()
    k[..., 1:] = noise[..., 1:]  # channel 0 keeps the tag, the rest is random
    nqb = s.chunk_frames * s.blocks_per_frame
    pq = torch.randn(s.layers, s.batch, s.heads, nqb, s.head_dim, generator=g)
    return k, v, pq


def meta(policy, layer, b, slots):
    return [(int(policy.slot_frame[layer, b, i]), int(policy.slot_block[layer, b, i])) for i in slots]


@settings(max_examples=30, deadline=None)
@given(
    chunk=st.integers(1, 2), nb=st.integers(1, 3), sink=st.integers(0, 2), extra=st.integers(0, 3),
    cap=st.integers(1, 5), commits=st.integers(1, 10), seed=st.integers(0, 10_000),
)
def test_persistent_memory_properties(chunk, nb, sink, extra, cap, commits, seed):
    s = spec(chunk=chunk, nb=nb, layers=2, batch=2)
    policy = make(sink=sink, window=chunk + extra, blocks=cap)
    policy.reset(s)
    g = torch.Generator().manual_seed(seed)
    hist = extra
    for c in range(commits):
        before_p = {(l, b): set(meta(policy, l, b, range(policy.p_base, policy.p_base + policy.n_persistent)))
                    for l in range(s.layers) for b in range(s.batch)}
        before_ring = [(int(policy.slot_frame[0, 0, i]), int(policy.slot_block[0, 0, i])) for i in policy.ring]
        k, v, pq = random_chunk(s, c * chunk, g)
        policy.commit(k, v, pq)
        seen = (c + 1) * chunk
        rest = [f for f in range(seen) if f >= sink]
        window = rest[-hist:] if hist else []
        evicted = [f for f in rest if f not in window]
        assert policy.n_persistent <= cap
        assert policy.n_persistent == min(cap, len(evicted) * nb)
        for layer in range(s.layers):
            view = policy.view(layer)
            # read by every query: the sink and the persistent blocks, nothing else
            assert view.always.tolist() == view.region("sink").tolist() + view.region("persistent").tolist()
            assert view.region("persistent").numel() == policy.n_persistent
            for b in range(s.batch):
                sink_m = meta(policy, layer, b, view.region("sink"))
                assert sink_m == [(f, bl) for f in range(min(sink, seen)) for bl in range(nb)]  # sink never evicted
                local_m = meta(policy, layer, b, view.local)
                assert local_m == [(f, bl) for f in window for bl in range(nb)]
                p_m = meta(policy, layer, b, view.region("persistent"))
                assert len(set(p_m)) == len(p_m)  # no duplicates
                assert all(f in evicted for f, _ in p_m)  # only blocks that left the window
                # P after the commit comes from P before it plus what was evicted in this commit
                newly = set(before_ring + [(f, bl) for f in range(c * chunk, seen) for bl in range(nb)])
                assert set(p_m) <= before_p[(layer, b)] | newly
                # contents follow their blocks
                tags = view.k[b, view.region("persistent"), 0, 0, 0]
                want = torch.tensor([layer * 1e6 + b * 1e4 + f * 10 + bl for f, bl in p_m], dtype=torch.float32)
                assert torch.equal(tags, want)


def test_top_c_by_attention_score_is_kept():
    """After an eviction P is exactly the C best-scoring blocks of P u E under the chunk's pooled queries."""
    s = spec(chunk=1, nb=4, layers=1, batch=1, heads=2, blk=2, dim=8)
    policy = make(sink=0, window=1, blocks=3)  # no history: every committed frame is evicted at once
    policy.reset(s)
    g = torch.Generator().manual_seed(0)
    policy.commit(*random_chunk(s, 0, g))
    assert policy.n_persistent == 3
    p_slots = range(policy.p_base, policy.p_base + 3)
    p_before_meta = meta(policy, 0, 0, p_slots)
    p_before_k = policy.k[:, :, policy.p_base : policy.p_base + 3].clone()  # (1, 1, 3, H, BLK, D)
    # second frame: a query aligned with its block 2 makes that block the clear winner
    k2, v2, _ = random_chunk(s, 1, g)
    new_k = k2.view(1, 1, 2, 4, 2, 8).permute(0, 1, 3, 2, 4, 5)  # (1, 1, 4, H, BLK, D)
    target = new_k[0, 0, 2].mean(1)  # (H, D) pooled key of block 2
    pq2 = (10 * target).view(1, 1, 2, 1, 8).expand(1, 1, 2, 4, 8).clone()
    policy.commit(k2, v2, pq2)
    kept = set(meta(policy, 0, 0, p_slots))
    assert (1, 2) in kept
    # brute force: score every candidate of P u E and take the best three
    cand_meta = p_before_meta + [(1, b) for b in range(4)]
    scores = score_candidates(pq2, torch.cat([p_before_k, new_k], 2).mean(4))[0, 0]  # (7,)
    assert kept == {cand_meta[i] for i in scores.topk(3).indices.tolist()}


def test_positions_stay_within_training_distance_at_100x():
    s = spec(chunk=2, nb=2, train=8, layers=1, batch=1)
    policy = make(sink=1, window=4, blocks=2)
    policy.reset(s)
    g = torch.Generator().manual_seed(0)
    for c in range(400):
        policy.commit(*random_chunk(s, 2 * c, g))
        view = policy.view(0)
        pos = view.slot_pos[:, view.visible]
        assert (view.query_pos + s.chunk_frames - 1 - pos).max() <= s.train_frames - 1
        assert (pos <= view.query_pos - 1).all()
        # reading order in time: sink, then P, then the window
        sp, pp, lp = (view.slot_pos[0, ids] for ids in (view.region("sink"), view.region("persistent"), view.local))
        if pp.numel():
            assert sp.max() < pp.min() and pp.max() < lp.min()


def test_sparse_forcing_rollout_pbsa_equals_sdpa():
    """The whole Sparse Forcing set in a rollout: the pbsa backend gives what the dense reference gives
    on the same views and selections, and the selection really drops blocks."""
    from worldkit.rollout import Rollout
    from worldkit_plugins.baselines.sdpa import SDPA
    from worldkit_plugins.sparse_forcing.local_window import LocalWindow
    from worldkit_plugins.sparse_forcing.pbsa import PBSA
    from tests.test_model import tiny_model

    m = tiny_model(torch.float64)
    ctx = torch.randn(2, 2, 3, 16, 16, dtype=torch.float64)
    act = torch.randn(2, 14, 2, dtype=torch.float64)
    outs, counts = {}, []
    for name, backend in (("sdpa", SDPA()), ("pbsa", PBSA())):
        sel = LocalWindow(LocalWindow.Config(top_k=0.25))
        r = Rollout(m, make(sink=1, window=4, blocks=4), sel, backend, steps=2, train_frames=8)
        r.hook = lambda layer, q, k, view, index: counts.append((index.count.float().mean().item(), view.local.numel()))
        outs[name] = r.run(ctx, act, 12, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(outs["pbsa"], outs["sdpa"], rtol=1e-7, atol=1e-7)
    assert any(c < nl for c, nl in counts if nl)  # fewer local blocks read than the window holds


def test_each_position_mode_at_100x_the_clip():
    """Read positions after 100 clips: absolute reads true frame indices (distances grow without bound);
    before_window puts all of P one frame before the window; ordered keeps P's frames in their order,
    newest just before the window, and both bounded modes keep every read distance within the window
    plus what P and the sink can hold."""
    s = spec(chunk=2, nb=2, layers=1, batch=2)
    g = torch.Generator().manual_seed(0)
    train_frames, cap = 8, 3
    seen = {}
    for mode in ("absolute", "before_window", "ordered"):
        policy = make(sink=1, window=4, blocks=cap, position=mode)
        policy.reset(s)
        g.manual_seed(0)
        for c in range(100 * train_frames // 2):
            policy.commit(*random_chunk(s, 2 * c, g))
        view = policy.view(0)
        q = view.query_pos
        pos = view.slot_pos  # (B, NS)
        p_pos, p_frame = pos[:, view.region("persistent")], policy.slot_frame[0][:, view.region("persistent")].float()
        sink_pos, local_pos = pos[:, view.region("sink")], pos[:, view.local]
        assert torch.equal(local_pos, policy.slot_frame[0][:, view.local].float())  # the window is never moved
        seen[mode] = (q, p_pos, p_frame, sink_pos)
        if mode == "absolute":
            assert torch.equal(p_pos, p_frame) and (sink_pos == 0).all()
            continue
        window_start = q - 2  # 2 cached frames of the 4-frame window
        assert (q - sink_pos).max() <= 4 + cap + 1 and (p_pos < window_start).all()
        if mode == "before_window":
            assert (p_pos == window_start - 1).all()
        else:
            for b in range(s.batch):  # newer frame -> larger position, one apart, the newest right before
                frames = sorted(set(p_frame[b].tolist()), reverse=True)
                want = {f: window_start - 1 - r for r, f in enumerate(frames)}
                assert p_pos[b].tolist() == [want[f] for f in p_frame[b].tolist()]
            assert (sink_pos < p_pos.min()).all()
    assert seen["absolute"][0] - seen["absolute"][3].min() > 700  # what the bounded modes avoid


def oracle_scores(pq: torch.Tensor, keys: list[torch.Tensor], pooling: str) -> torch.Tensor:
    """An independent fp64 TopC score for one layer and batch element: each candidate's keys (H, BLK, D)
    pooled over its tokens, attended by every pooled query, one softmax over the candidates per head and
    query block, the attention each candidate receives summed over heads and query blocks. pq: (H, NQB, D)."""
    q = pq.double()
    pooled = torch.stack([kk.double().mean(1) if pooling == "mean" else kk.double().amax(1) for kk in keys])  # (n, H, D)
    out = torch.zeros(len(keys), dtype=torch.float64)
    for h in range(q.shape[0]):
        for r in range(q.shape[1]):
            logits = torch.stack([q[h, r] @ pooled[n, h] for n in range(len(keys))]) / q.shape[-1] ** 0.5
            out += torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
    return out


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_top_c_against_an_fp64_oracle_over_many_commits(pooling):
    """Every commit that evicts: for each layer and batch element, P is a top-C set of P u E under the
    oracle's scores (up to fp32 rounding: no block left out scores clearly above one kept), and each kept
    slot holds that block's own keys and values. Layers and batch elements choose differently."""
    s = spec(chunk=2, nb=3, layers=2, batch=2, heads=2, blk=3, dim=8)
    cap = 4
    policy = make(sink=1, window=4, blocks=cap, pooling=pooling)
    policy.reset(s)
    g = torch.Generator().manual_seed(1)
    blocks = {}  # (frame, block) -> (k, v), each (L, B, H, BLK, D), as committed
    held = {(l, b): [] for l in range(s.layers) for b in range(s.batch)}  # P per layer and batch element
    ring: list[tuple[int, int]] = []
    checked, differ = 0, 0
    for c in range(30):
        k = torch.randn(s.layers, s.batch, s.heads, s.chunk_frames * s.blocks_per_frame * s.block_tokens, s.head_dim,
                        generator=g)
        v = torch.randn(k.shape, generator=g)
        pq = torch.randn(s.layers, s.batch, s.heads, s.chunk_frames * s.blocks_per_frame, s.head_dim, generator=g)
        ids = [(2 * c + i // s.blocks_per_frame, i % s.blocks_per_frame) for i in range(s.chunk_frames * s.blocks_per_frame)]
        for i, key in enumerate(ids):
            tok = slice(i * s.block_tokens, (i + 1) * s.block_tokens)
            blocks[key] = (k[:, :, :, tok], v[:, :, :, tok])
        ring += [key for key in ids if key[0] >= 1]  # frame 0 is the sink
        evicted, ring = ring[:max(0, len(ring) - 2 * s.blocks_per_frame)], ring[-2 * s.blocks_per_frame:]
        policy.commit(k, v, pq)
        if not evicted:
            continue
        chosen = {}
        for (l, b), before in held.items():
            cand = before + evicted
            score = oracle_scores(pq[l, b], [blocks[key][0][l, b] for key in cand], pooling)
            p = range(policy.p_base, policy.p_base + policy.n_persistent)
            kept = meta(policy, l, b, p)
            assert len(kept) == min(cap, len(cand)) and set(kept) <= set(cand)
            inside = torch.tensor([key in kept for key in cand])
            if (~inside).any():
                assert score[~inside].max() <= score[inside].min() + 1e-5, (c, l, b)
            for slot, key in zip(p, kept):  # the block's own keys and values, for this layer and element
                assert torch.equal(policy.k[l, b, slot], blocks[key][0][l, b])
                assert torch.equal(policy.v[l, b, slot], blocks[key][1][l, b])
            held[(l, b)] = kept
            chosen[(l, b)] = set(kept)
            checked += 1
        differ += len({frozenset(x) for x in chosen.values()}) > 1
    assert checked >= 100 and differ >= 10
