"""Image metrics on hand-made frames: PSNR, foreground PSNR, SSIM."""
import math

import torch

from worldkit import metrics


def frame(value=-1.0):
    return torch.full((3, 16, 16), value)  # (C, H, W) in [-1, 1]


def test_psnr_matches_its_formula_and_caps_identical_frames():
    a, b = frame(-1.0), frame(0.0)  # [0, 1] pixels: 0 vs 0.5, MSE 0.25
    assert torch.isclose(metrics.psnr(a, b), torch.tensor(-10 * math.log10(0.25)))
    assert metrics.psnr(a, a).item() == 100.0


def test_foreground_psnr_counts_what_moves_and_what_the_forecast_invents():
    bg = frame()
    truth = bg.clone()
    truth[:, 2:6, 2:6] = 1.0  # the object
    assert metrics.foreground_psnr(truth, truth, bg).item() == 100.0
    spurious = truth.clone()
    spurious[:, 8:16, 8:16] = 1.0  # the object right, plus a blob where the truth is background
    fg = metrics.foreground_psnr(spurious, truth, bg).item()
    # 64 wrong pixels among the 16 + 64 that differ from the background, error 1 on [0, 1] pixels
    assert math.isclose(fg, -10 * math.log10(64 / 80), rel_tol=1e-5)
    missing = bg.clone()  # the object left out
    assert math.isclose(metrics.foreground_psnr(missing, truth, bg).item(), 0.0, abs_tol=1e-5)
    assert math.isnan(metrics.foreground_psnr(bg, bg, bg).item())  # nothing moves, nothing drawn


def test_ssim_is_one_for_identical_frames_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 16, generator=g) * 2 - 1
    assert torch.isclose(metrics.ssim(x, x), torch.tensor(1.0), atol=1e-5)
    noisy = (x + 0.5 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    assert metrics.ssim(noisy, x).item() < 0.9
