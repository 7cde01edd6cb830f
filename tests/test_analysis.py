"""Attention analysis on synthetic maps with known answers, and on a tiny trained run."""
import torch

from worldkit.analysis import local_concentration, persistence


def test_uniform_attention_gives_the_uniform_share():
    frames = [torch.arange(8).repeat_interleave(2)]  # 8 frames x 2 blocks
    maps = [{0: torch.full((2, 3, 16), 1 / 16)}]
    assert abs(local_concentration(maps, frames, window_frames=4) - 0.25) < 1e-6


def test_concentrated_attention_is_measured():
    frames = [torch.arange(8).repeat_interleave(2)]
    m = torch.zeros(2, 3, 16)
    m[..., 15] = 0.7  # newest block takes most of the window's mass
    m[..., 8:15] = 0.3 / 7
    share = local_concentration([{0: m}], frames, window_frames=4)  # 8 window blocks, top 2
    assert abs(share - (0.7 + 0.3 / 7)) < 1e-5


def test_persistence_of_stripes_and_of_noise():
    g = torch.Generator().manual_seed(0)
    frames, stripes, noise = [], [], []
    for c in range(6):
        f = torch.arange(10 + 2 * c)  # one block per frame, two new frames per chunk
        frames.append(f)
        s = torch.full((1, 1, f.numel()), 0.01)
        s[..., [1, 3, 5]] = 1.0  # the same history blocks stay on top: vertical stripes
        stripes.append({0: s})
        noise.append({0: torch.rand(1, 1, f.numel(), generator=g)})
    kept, chance = persistence(stripes, frames, window_frames=4, top=3)
    assert kept == 1.0 and chance < 0.5
    kept_noise, _ = persistence(noise, frames, window_frames=4, top=3)
    assert kept_noise < 0.8
