"""The long-horizon evaluation's statistics: episodes are the independent samples, whatever the seeds."""
import numpy as np
import torch

from worldkit import metrics
from worldkit.evaluate import evaluate
from worldkit.frames import frames_to_tensor
from worldkit.rollout import ChunkTiming


class NoisyPersistence:
    """A stand-in rollout: the last context frame plus noise drawn from the rollout's generator."""

    chunk_frames = 2

    def __init__(self):
        self.model = torch.nn.Linear(1, 1)
        self.timings = []

    def run(self, ctx, act, n_gen, generator, progress=None, truth=None):
        last = ctx[:, -1:].expand(-1, n_gen, -1, -1, -1)
        noise = torch.randn(last.shape, generator=generator) * 0.3
        self.timings = [ChunkTiming(1.0, 0.5, 1.5, 100 * ctx.shape[0])] * (n_gen // self.chunk_frames)  # a batch's cache
        if progress is not None:
            progress(n_gen)
        return (last + noise).clamp(-1, 1)


def test_seeds_average_within_an_episode_before_the_standard_error():
    rng = np.random.default_rng(0)
    N, T = 6, 10
    frames = rng.integers(0, 256, (N, T, 8, 8, 3), dtype=np.uint8)
    actions = np.zeros((N, T, 1), np.float32)
    mean_frame = torch.zeros(3, 8, 8)
    kw = dict(horizons=[1, 2], clip_frames=4, context_frames=2, mean_frame=mean_frame, strips=0, batch_size=4)
    one = evaluate(NoisyPersistence(), frames, actions, seeds=1, **kw)
    three = evaluate(NoisyPersistence(), frames, actions, seeds=3, **kw)
    # a deterministic baseline repeated per seed is the same evidence: its standard error must not shrink
    assert three.bucket("mse", "persistence") == one.bucket("mse", "persistence")
    # the model's error: the mean over seeds per episode, then mean and standard error over the N episodes
    gt = frames_to_tensor(frames)
    ctx, target = gt[:, :2], gt[:, 2:10]
    per_seed = []
    for seed in range(3):
        preds = [NoisyPersistence().run(ctx[s:s + 4], None, 8, torch.Generator().manual_seed(1_000_003 * seed + s))
                 for s in range(0, N, 4)]
        per_seed.append(metrics.mse(torch.cat(preds), target)[:, :4].mean(1))  # (N,) over the 1x bucket
    expected = metrics.mean_stderr(torch.stack(per_seed).mean(0))
    got = three.bucket("mse")[0]
    assert np.allclose(got, expected, rtol=1e-5)
    assert got[1] > one.bucket("mse")[0][1] / 3  # not the sqrt(3)-shrunk error of 18 "samples"


def test_kv_is_per_sequence_and_the_timed_batch_is_recorded():
    rng = np.random.default_rng(1)
    kw = dict(horizons=[1], clip_frames=4, context_frames=2, mean_frame=torch.zeros(3, 8, 8), strips=0, batch_size=4)
    for n, batch in ((6, 4), (1, 1)):
        frames = rng.integers(0, 256, (n, 6, 8, 8, 3), dtype=np.uint8)
        res = evaluate(NoisyPersistence(), frames, np.zeros((n, 6, 1), np.float32), **kw)
        assert res.peak_kv_bytes == 100 and res.kv_bytes == [100, 100] and res.batch == batch
