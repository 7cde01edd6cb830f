"""The causal video DiT: cached chunk-by-chunk passes equal the parallel path under the policy's mask."""
import pytest
import torch

from worldkit import diffusion
from worldkit.model import ChunkContext, ParallelContext, WorldModel
from worldkit.rollout import Rollout
from worldkit_plugins.baselines.memory import Dense, Sink, SlidingWindow
from worldkit_plugins.baselines.sdpa import SDPA
from worldkit_plugins.baselines.selector import AllBlocks


def tiny_model(dtype=torch.float64, seed=0, chunk=2, frame_size=16, block_patches=2):
    torch.manual_seed(seed)
    m = WorldModel(frame_size=frame_size, action_dim=2, patch=4, width=48, layers=2, heads=2,
                   block_patches=block_patches, chunk_frames=chunk)
    for p in m.parameters():  # zero-initialised gates would hide attention: give every weight a value
        torch.nn.init.normal_(p, std=0.05)
    return m.to(dtype)


POLICIES = {
    "dense": lambda: Dense(),
    "sliding_window": lambda: SlidingWindow(SlidingWindow.Config(window_frames=4)),
    "sink": lambda: Sink(Sink.Config(sink_frames=2, window_frames=4)),
    "sink_absolute": lambda: Sink(Sink.Config(sink_frames=2, window_frames=4, sink_position="absolute")),
}


def parallel_context(policy, frames, chunk):
    visible, key_pos = policy.visibility(frames)
    return ParallelContext(
        visible.repeat_interleave(chunk, 0)[:frames],
        torch.arange(frames, dtype=torch.float64),
        key_pos.repeat_interleave(chunk, 0)[:frames].double(),
    )


@pytest.mark.parametrize("name", list(POLICIES))
@pytest.mark.parametrize("frame, block", [(16, 2), ((8, 24), (1, 3))], ids=["square", "non-square"])
def test_cached_chunks_equal_parallel_forward(name, frame, block):
    """Every chunk's cached pass (clean context committed, the chunk itself noisy) equals one parallel
    forward over the clip with the policy's visibility mask, for the same inputs."""
    m = tiny_model(frame_size=frame, block_patches=block)
    B, Fr, fc = 2, 10, 2
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, Fr, 3, *m.geometry.frame_hw, generator=g, dtype=torch.float64)
    a = torch.randn(B, Fr, 2, generator=g, dtype=torch.float64)
    t = torch.rand(B, Fr, generator=g, dtype=torch.float64)
    policy = POLICIES[name]()
    policy.reset(m.cache_spec(B, train_frames=6))
    for c in range(0, Fr, fc):
        # parallel: clean frames before the chunk, the chunk noisy (later frames are masked out)
        tt = torch.zeros(B, Fr, dtype=torch.float64)
        tt[:, c : c + fc] = t[:, c : c + fc]
        par = m(x, tt, a, parallel_context(policy, Fr, fc))[:, c : c + fc]
        cached = m(x[:, c : c + fc], t[:, c : c + fc], a[:, c : c + fc], ChunkContext(policy, AllBlocks(), SDPA()))
        torch.testing.assert_close(cached, par, rtol=1e-9, atol=1e-9)
        ctx = ChunkContext(policy, AllBlocks(), SDPA(), collect=True)
        m(x[:, c : c + fc], torch.zeros(B, fc, dtype=torch.float64), a[:, c : c + fc], ctx)
        policy.commit(*ctx.kv_for_commit())


def test_policies_actually_differ():
    """The parity above is not vacuous: a sliding window changes late chunks against dense."""
    m = tiny_model()
    B, Fr, fc = 1, 10, 2
    x = torch.randn(B, Fr, 3, 16, 16, dtype=torch.float64)
    a = torch.randn(B, Fr, 2, dtype=torch.float64)
    t = torch.zeros(B, Fr, dtype=torch.float64)
    outs = {}
    for name in ("dense", "sliding_window", "sink"):
        policy = POLICIES[name]()
        policy.reset(m.cache_spec(B, train_frames=6))
        outs[name] = m(x, t, a, parallel_context(policy, Fr, fc))
    assert torch.allclose(outs["dense"][:, :4], outs["sliding_window"][:, :4])  # window not yet full
    assert not torch.allclose(outs["dense"][:, 8:], outs["sliding_window"][:, 8:], atol=1e-6)
    assert not torch.allclose(outs["sink"][:, 8:], outs["sliding_window"][:, 8:], atol=1e-6)


def test_patchify_roundtrip_and_block_major_order():
    m = tiny_model()
    x = torch.randn(2, 3, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(m.unpatchify(m.patchify(x)), x)
    # tokens of block 0 are the top-left 2x2 patches
    perm = m.perm[: m.geometry.block_tokens].tolist()
    assert perm == [0, 1, 4, 5]


def test_square_token_order_is_unchanged():
    """Frames and blocks given as one side keep the block-major order they always had."""
    from worldkit.model import Geometry

    for g, b in ((4, 2), (8, 4), (6, 3), (4, 1)):
        perm, rows, cols = Geometry(g * 2, 2, b).token_order()
        r = torch.arange(g).view(g // b, b, 1, 1).expand(g // b, b, g // b, b).permute(0, 2, 1, 3).reshape(-1)
        c = torch.arange(g).view(1, 1, g // b, b).expand(g // b, b, g // b, b).permute(0, 2, 1, 3).reshape(-1)
        assert torch.equal(perm, r * g + c) and torch.equal(rows, r) and torch.equal(cols, c)
    assert Geometry(16, 4, 2) == Geometry(16, 4, 2) and Geometry(16, 4, 2).grid == 4


def test_non_square_frames_and_blocks():
    """A (height, width) frame cut into (rows, cols) blocks, as Wan2.1's 30 x 52 latent grid into 30 x 4
    strips: sizes, block-major order (each block a whole tile), patchify round trip, and a rollout chunk."""
    from worldkit.model import Geometry

    wan = Geometry((60, 104), 2, (30, 4), channels=16)
    assert (wan.grid_hw, wan.tokens_per_frame, wan.block_tokens, wan.blocks_per_frame) == ((30, 52), 1560, 120, 13)
    with pytest.raises(ValueError, match="use grid_hw"):
        wan.grid
    with pytest.raises(ValueError, match="must be a multiple"):
        WorldModel(frame_size=(8, 12), action_dim=1, patch=2, block_patches=(2, 4))  # 4 does not divide 6
    torch.manual_seed(0)
    m = WorldModel(frame_size=(8, 12), action_dim=2, patch=2, width=48, layers=2, heads=2, block_patches=(2, 3),
                   chunk_frames=2).double()
    geo = m.geometry
    assert (geo.grid_hw, geo.block_tokens, geo.blocks_per_frame) == ((4, 6), 6, 4)
    assert m.perm[:6].tolist() == [0, 1, 2, 6, 7, 8]  # block 0: rows 0-1, columns 0-2
    for blk in range(4):
        rows, cols = m.rows[6 * blk: 6 * blk + 6], m.cols[6 * blk: 6 * blk + 6]
        assert set(rows.tolist()) == {2 * (blk // 2), 2 * (blk // 2) + 1}
        assert set(cols.tolist()) == {3 * (blk % 2), 3 * (blk % 2) + 1, 3 * (blk % 2) + 2}
    x = torch.randn(2, 3, 3, 8, 12, dtype=torch.float64)
    torch.testing.assert_close(m.unpatchify(m.patchify(x)), x)
    r = Rollout(m, SlidingWindow(SlidingWindow.Config(window_frames=4)), AllBlocks(), SDPA(), steps=2, train_frames=4)
    out = r.run(torch.randn(1, 2, 3, 8, 12, dtype=torch.float64), torch.randn(1, 6, 2, dtype=torch.float64), 4)
    assert out.shape == (1, 4, 3, 8, 12) and torch.isfinite(out).all()


def test_rollout_is_deterministic_and_reports_timing():
    m = tiny_model(torch.float32)
    r = Rollout(m, Dense(), AllBlocks(), SDPA(), steps=3, train_frames=6)
    ctx = torch.randn(2, 2, 3, 16, 16)
    act = torch.randn(2, 8, 2)
    a = r.run(ctx, act, 6, generator=torch.Generator().manual_seed(0))
    b = r.run(ctx, act, 6, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 6, 3, 16, 16)
    torch.testing.assert_close(a, b)
    assert len(r.timings) == 3
    assert all(t.total_ms >= t.denoise_ms > 0 for t in r.timings)
    kv = [t.kv_bytes for t in r.timings]
    assert kv == sorted(kv) and kv[0] < kv[-1]  # dense grows with every commit


def test_teacher_forced_chunks_are_one_chunk_forecasts_from_the_true_history():
    """run(truth=...) commits the true frames: chunk c equals a fresh rollout of one chunk from the
    context plus the true frames before it, with the same noise."""
    m = tiny_model(torch.float64)
    r = Rollout(m, SlidingWindow(SlidingWindow.Config(window_frames=4)), AllBlocks(), SDPA(), steps=2, train_frames=6,
                renoise=False)  # the initial noise is then all the randomness of a chunk
    ctx = torch.randn(1, 2, 3, 16, 16, dtype=torch.float64)
    truth = torch.randn(1, 6, 3, 16, 16, dtype=torch.float64)
    act = torch.randn(1, 8, 2, dtype=torch.float64)
    noise = [torch.randn(1, 2, 3, 16, 16, dtype=torch.float64) for _ in range(3)]
    r.reset(1, dtype=torch.float64)
    r.commit_frames(ctx, act[:, :2])
    forced = [r.chunk(act[:, 2 + 2 * c : 4 + 2 * c], noise=noise[c], commit=truth[:, 2 * c : 2 * c + 2]) for c in range(3)]
    for c in range(3):
        history = torch.cat([ctx, truth[:, : 2 * c]], 1)
        r.reset(1, dtype=torch.float64)
        r.commit_frames(history, act[:, : 2 + 2 * c])
        torch.testing.assert_close(r.chunk(act[:, 2 + 2 * c : 4 + 2 * c], noise=noise[c]), forced[c])
    free = Rollout(m, SlidingWindow(SlidingWindow.Config(window_frames=4)), AllBlocks(), SDPA(), steps=2, train_frames=6)
    a = free.run(ctx, act, 6, generator=torch.Generator().manual_seed(0))
    b = free.run(ctx, act, 6, generator=torch.Generator().manual_seed(0), truth=truth)
    torch.testing.assert_close(a[:, :2], b[:, :2])  # the first chunk sees the same context
    assert not torch.allclose(a[:, 2:], b[:, 2:])  # later chunks read the true frames instead


def test_bounded_policy_rolls_out_100x_with_flat_memory():
    """A bounded policy runs 100x the training clip: no error, KV bytes flat once the window is full."""
    m = WorldModel(frame_size=8, action_dim=1, patch=4, width=24, layers=1, heads=2, block_patches=1, chunk_frames=4)
    train = 8
    r = Rollout(m, Sink(Sink.Config(sink_frames=4, window_frames=4)), AllBlocks(), SDPA(), steps=1, train_frames=train)
    out = r.run(torch.zeros(1, 4, 3, 8, 8), torch.zeros(1, 4 + 100 * train, 1), 100 * train)
    assert out.shape[1] == 800 and torch.isfinite(out).all()
    kv = [t.kv_bytes for t in r.timings]
    assert len(set(kv[3:])) == 1


def test_exit_step_is_the_only_differentiable_step():
    """With an exit step, the steps before it run without gradient; the committed cache is detached."""
    m = tiny_model(torch.float32)
    r = Rollout(m, Dense(), AllBlocks(), SDPA(), steps=4, train_frames=6)
    r.reset(1)
    seen = []
    handle = m.blocks[0].attn.register_forward_hook(lambda mod, inp, out: seen.append(out.requires_grad))
    x0 = r.chunk(torch.randn(1, 2, 2), exit_step=2)
    handle.remove()
    assert seen == [False, False, True, False]  # steps 0, 1 (no grad), exit step 2, commit pass
    assert x0.requires_grad
    assert not r.memory.k.requires_grad
    x0.sum().backward()
    assert m.blocks[0].attn.qkv.weight.grad is not None


def test_schedule_and_prediction_conversions():
    ts = diffusion.schedule(4, shift=3.0)
    assert ts[0] == 1 and ts[-1] == 0 and (ts[:-1] > ts[1:]).all()
    x0, eps = torch.randn(2, 1, 3, 4, 4), torch.randn(2, 1, 3, 4, 4)
    t = torch.full((2, 1), 0.3)
    xt = diffusion.add_noise(x0, eps, t)
    v = diffusion.target(x0, eps, "v")
    torch.testing.assert_close(diffusion.to_x0(v, xt, t, "v"), x0)
    # the deterministic step from the true x0 lands on the true trajectory
    tn = torch.full((2, 1), 0.1)
    torch.testing.assert_close(diffusion.step(x0, xt, t, tn, None), diffusion.add_noise(x0, eps, tn))


def test_block_size_is_a_read_time_setting(tmp_path):
    """block_patches groups tokens into cache blocks and changes no weight: a checkpoint loads at another
    block size (other settings are still refused), and a dense rollout is the same at every block size."""
    from worldkit.errors import WorldkitError
    from worldkit.checkpoints import load_weights, save_weights

    torch.manual_seed(0)
    kw = dict(frame_size=16, action_dim=1, patch=4, width=32, layers=2, heads=2, chunk_frames=2)
    src = WorldModel(block_patches=2, **kw)
    for p in src.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    save_weights(src, tmp_path / "w.pt")
    ctx, acts = torch.rand(1, 2, 3, 16, 16), torch.randn(1, 6, 1)
    outs = []
    for bp in (1, 2, 4):
        m = WorldModel(block_patches=bp, **kw)
        load_weights(m, tmp_path / "w.pt")
        r = Rollout(m, Dense(Dense.Config()), AllBlocks(AllBlocks.Config()), SDPA(SDPA.Config()), steps=2, train_frames=6)
        with torch.no_grad():
            outs.append(r.run(ctx, acts, 4, generator=torch.Generator().manual_seed(1)))
        assert m.geometry.blocks_per_frame == (4 // bp) ** 2
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[2], outs[1], atol=1e-5, rtol=0)
    with pytest.raises(WorldkitError, match="width=32"):
        load_weights(WorldModel(block_patches=2, **{**kw, "width": 64}), tmp_path / "w.pt")
