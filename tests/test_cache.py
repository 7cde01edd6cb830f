"""Memory policies over the block-paged cache: what is kept, where, and how many bytes it takes."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from worldkit.interfaces import CacheSpec
from worldkit.testing import check_memory_policy, check_visibility
from worldkit_plugins.baselines.memory import Dense, Sink, SlidingWindow


def spec(chunk=2, nb=3, train=8, layers=2, batch=2, heads=2, blk=2, dim=6):
    return CacheSpec(
        layers=layers, batch=batch, heads=heads, head_dim=dim, block_tokens=blk, blocks_per_frame=nb,
        chunk_frames=chunk, train_frames=train, dtype=torch.float32, device=torch.device("cpu"),
    )


def tagged_chunk(s: CacheSpec, first_frame: int):
    """K/V of one chunk whose every value encodes (layer, batch, frame, block)."""
    L, B, H, D = s.layers, s.batch, s.heads, s.head_dim
    n = s.chunk_frames * s.blocks_per_frame
    frame = first_frame + torch.arange(n) // s.blocks_per_frame
    block = torch.arange(n) % s.blocks_per_frame
    tag = (torch.arange(L).view(L, 1, 1) * 1e6 + torch.arange(B).view(1, B, 1) * 1e4 + frame * 10 + block).float()
    k = tag.view(L, B, 1, n, 1, 1).expand(L, B, H, n, s.block_tokens, D).reshape(L, B, H, n * s.block_tokens, D)
    return k.clone(), -k.clone(), torch.zeros(L, B, H, n, D)


def expected_frames(policy_kind, sink, hist, seen):
    frames = list(range(seen))
    keep_sink = [f for f in frames if f < sink]
    rest = [f for f in frames if f >= sink]
    local = rest if hist is None else rest[-hist:] if hist else []
    return keep_sink, local


policies = st.sampled_from(["dense", "sliding_window", "sink"])


@settings(max_examples=40, deadline=None)
@given(
    kind=policies,
    chunk=st.integers(1, 3),
    nb=st.integers(1, 4),
    sink=st.integers(1, 3),
    extra_window=st.integers(0, 5),
    commits=st.integers(1, 12),
)
def test_policy_keeps_exactly_what_it_should(kind, chunk, nb, sink, extra_window, commits):
    s = spec(chunk=chunk, nb=nb)
    window = chunk + extra_window
    policy = {
        "dense": lambda: Dense(),
        "sliding_window": lambda: SlidingWindow(SlidingWindow.Config(window_frames=window)),
        "sink": lambda: Sink(Sink.Config(sink_frames=sink, window_frames=window)),
    }[kind]()
    policy.reset(s)
    sink_frames = sink if kind == "sink" else 0
    hist = None if kind == "dense" else window - chunk
    capacity = policy.capacity
    per_slot = 2 * s.layers * s.batch * s.heads * s.block_tokens * s.head_dim * 4
    for c in range(commits):
        policy.commit(*tagged_chunk(s, c * chunk))
        seen = (c + 1) * chunk
        exp_sink, exp_local = expected_frames(kind, sink_frames, hist, seen)
        for layer in range(s.layers):
            view = policy.view(layer)
            # sink: every block of the first frames, in order, never evicted
            sink_meta = [(int(view.slot_frame[0, i]), int(view.slot_block[0, i])) for i in view.region("sink")]
            assert sink_meta == [(f, b) for f in exp_sink for b in range(nb)]
            # local: exactly the last frames, oldest first, each block once
            local_meta = [(int(view.slot_frame[0, i]), int(view.slot_block[0, i])) for i in view.local]
            assert local_meta == [(f, b) for f in exp_local for b in range(nb)]
            assert view.region("persistent").numel() == 0
            assert view.always.tolist() == view.region("sink").tolist()  # read by every query: the sink alone
            # contents are the committed K/V of that (layer, batch, frame, block)
            vis = view.visible
            for b in range(s.batch):
                tag = layer * 1e6 + b * 1e4 + view.slot_frame[b, vis] * 10 + view.slot_block[b, vis]
                assert torch.equal(view.k[b, vis].flatten(1).amin(1), tag.float())
                assert torch.equal(view.v[b, vis].flatten(1).amax(1), -tag.float())
            assert view.query_pos == seen
        assert policy.nbytes() == (len(exp_sink) + len(exp_local)) * nb * per_slot
        if kind != "dense":  # bounded: preallocated, never grows
            assert policy.capacity == capacity


def test_bounded_policy_memory_is_flat_and_dense_grows():
    s = spec(chunk=2, nb=4)
    sw, dense = SlidingWindow(SlidingWindow.Config(window_frames=6)), Dense()
    sw.reset(s)
    dense.reset(s)
    sizes_sw, sizes_dense = [], []
    for c in range(20):
        chunk = tagged_chunk(s, 2 * c)
        sw.commit(*chunk)
        dense.commit(*chunk)
        sizes_sw.append(sw.nbytes())
        sizes_dense.append(dense.nbytes())
    assert len(set(sizes_sw[2:])) == 1  # flat once the window has filled (after 2 of its 3 chunks... and on)
    assert sizes_dense == sorted(sizes_dense) and sizes_dense[-1] == 20 * sizes_dense[0]


@pytest.mark.parametrize("make", [
    lambda: SlidingWindow(SlidingWindow.Config(window_frames=6)),
    lambda: Sink(Sink.Config(sink_frames=2, window_frames=6)),
])
def test_read_positions_stay_within_training_distance_at_100x(make):
    """At 100x the training clip, no visible block is read further back than the training clip."""
    s = spec(chunk=2, nb=2, train=8)
    policy = make()
    policy.reset(s)
    for c in range(400):  # 800 frames = 100 x 8
        policy.commit(*tagged_chunk(s, 2 * c))
        view = policy.view(0)
        pos = view.slot_pos[:, view.visible]
        newest_query = view.query_pos + s.chunk_frames - 1
        assert (newest_query - pos).max() <= s.train_frames - 1
        assert (pos <= view.query_pos - 1).all()  # the past stays in the past


def test_sink_absolute_positions_grow_with_the_horizon():
    s = spec(chunk=2, nb=2, train=8)
    policy = Sink(Sink.Config(sink_frames=2, window_frames=6, sink_position="absolute"))
    policy.reset(s)
    for c in range(50):
        policy.commit(*tagged_chunk(s, 2 * c))
    view = policy.view(0)
    assert view.query_pos - view.slot_pos[:, view.region("sink")].min() == 100


def test_window_shorter_than_chunk_is_refused():
    with pytest.raises(ValueError, match="window_frames"):
        SlidingWindow(SlidingWindow.Config(window_frames=1)).reset(spec(chunk=2))


@pytest.mark.parametrize("make", [Dense, lambda: SlidingWindow(SlidingWindow.Config(window_frames=4)),
                                  lambda: Sink(Sink.Config(sink_frames=2, window_frames=4))])
def test_visibility_mask_matches_what_the_cache_holds(make):
    """The static mask used for parallel training agrees with the cache, chunk by chunk."""
    check_visibility(make(), spec(chunk=2, nb=1, train=8), 12)


BUILT_IN_MEMORY = {
    "dense": {}, "sliding_window": {"window_frames": 4}, "sink": {"sink_frames": 1, "window_frames": 4},
    "persistent_block": {"sink_frames": 1, "window_frames": 4, "persistent_blocks": 5},
}


def test_every_built_in_memory_policy_is_tested_for_its_bytes():
    from worldkit import registry

    built_in = {e.name for e in registry.entries("memory") if e.origin.startswith("worldkit-video ")}
    assert built_in == set(BUILT_IN_MEMORY)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", sorted(BUILT_IN_MEMORY))
def test_nbytes_is_the_bytes_of_the_keys_and_values_every_layer_reads(name, dtype):
    """After every commit, nbytes() equals the bytes of K and V in the slots the views expose (sink,
    persistent, local: each slot once), summed over layers: what the KV figures of a run report."""
    from dataclasses import replace

    from worldkit import registry

    s = replace(spec(chunk=2, nb=3, layers=2, batch=2), dtype=dtype)
    policy = registry.build("memory", name, BUILT_IN_MEMORY[name])
    policy.reset(s)
    g = torch.Generator().manual_seed(0)
    sizes = []
    for c in range(12):
        k, v, _ = tagged_chunk(s, 2 * c)
        pq = torch.randn(s.layers, s.batch, s.heads, s.chunk_frames * s.blocks_per_frame, s.head_dim, generator=g)
        policy.commit(k + torch.randn(k.shape, generator=g), v, pq)
        held = 0
        for layer in range(s.layers):
            view = policy.view(layer)
            ids = view.visible
            assert ids.unique().numel() == ids.numel()
            held += view.k[:, ids].numel() * view.k.element_size() + view.v[:, ids].numel() * view.v.element_size()
        assert policy.nbytes() == held, c
        sizes.append(held)
    blocks = sizes[-1] // (2 * s.layers * s.batch * s.heads * s.block_tokens * s.head_dim * torch.tensor([], dtype=dtype).element_size())
    assert blocks == {"dense": 24 * 3, "sliding_window": 2 * 3, "sink": 3 + 2 * 3, "persistent_block": 3 + 5 + 2 * 3}[name]


CONTRACT_CASES = [(name, {}) for name in sorted(BUILT_IN_MEMORY)] + [(n, c) for n, c in BUILT_IN_MEMORY.items() if c] + [
    ("sink", {"sink_position": "absolute"}),
    ("persistent_block", {"position": "ordered", "persistent_blocks": 4}),
    ("persistent_block", {"position": "absolute", "sink_frames": 0}),
]


@pytest.mark.parametrize("name, config", CONTRACT_CASES, ids=[n + "".join(f"-{k}={v}" for k, v in c.items()) for n, c in CONTRACT_CASES])
def test_every_built_in_memory_policy_meets_the_contract(name, config):
    """worldkit.testing's contract test, the one a third-party policy runs, on every built-in."""
    from worldkit import registry

    check_memory_policy(registry.get("memory", name), config)


def test_bounded_built_ins_promise_the_training_distance_by_default():
    """At their default settings the bounded built-ins read nothing further back than the training clip."""
    from worldkit import registry

    s = spec(chunk=2, nb=3, train=8)
    for name, bounded in (("dense", False), ("sliding_window", True), ("sink", True), ("persistent_block", True)):
        policy = registry.build("memory", name)
        policy.reset(s)
        bound = policy.max_read_distance()
        assert (bound is not None) == bounded, name
        assert bound is None or bound <= s.train_frames - 1, (name, bound)


class _Liar(SlidingWindow):
    """Reports no bytes."""

    def nbytes(self):
        return 0


class _Keeper(Dense):
    """Keeps the graph of what it is given."""

    def commit(self, k, v, pooled_q):
        super().commit(k, v, pooled_q)
        self.k = self.k + 0 * k.sum()


class _Forgetful(SlidingWindow):
    """Its reset leaves the ring as it was."""

    def reset(self, spec):
        ring = getattr(self, "ring", [])
        super().reset(spec)
        self.ring = ring


class _Boastful(Dense):
    """Promises bounded positions and keeps everything."""

    def max_read_distance(self):
        return 7


class _EveryOtherWrongMask(SlidingWindow):
    """Keeps every other chunk but states the sliding window's mask."""

    def keeps_chunk(self, chunk):
        return chunk % 2 == 0

    def max_read_distance(self):
        return None

    def visibility(self, num_frames):
        twin = SlidingWindow(self.config)
        twin.reset(self.spec)
        return twin.visibility(num_frames)


class _StrayRegion(SlidingWindow):
    """Names a region of slots that are not read by every query."""

    def view(self, layer):
        view = super().view(layer)
        view.regions["sink"] = view.local[:1]
        return view


@pytest.mark.parametrize("cls, message", [
    (_Liar, "nbytes"), (_Keeper, "requires grad"), (_Forgetful, "after a second reset"), (_Boastful, "max_read_distance"),
    (_EveryOtherWrongMask, "the mask shows frames"), (_StrayRegion, "regions.'sink'. names slots that are not in view.always"),
])
def test_the_contract_test_catches_a_broken_policy(cls, message):
    with pytest.raises(AssertionError, match=rf"memory policy {cls.__name__}\(.*{message}"):
        check_memory_policy(cls, {"window_frames": 4} if issubclass(cls, SlidingWindow) else None)
