"""Frame metrics against ground truth, reference forecasts, and means with standard errors.

Frames are float tensors in [-1, 1], shaped (..., C, H, W); metrics are computed per frame.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _unit(x: Tensor) -> Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def mse(pred: Tensor, gt: Tensor) -> Tensor:
    """Per-frame mean squared error on [0, 1] pixels: (..., C, H, W) -> (...)."""
    return ((_unit(pred) - _unit(gt)) ** 2).flatten(-3).mean(-1)


def psnr(pred: Tensor, gt: Tensor) -> Tensor:
    """Per-frame PSNR in dB on [0, 1] pixels (capped at 100 dB for identical frames)."""
    return (-10 * torch.log10(mse(pred, gt).clamp_min(1e-10))).clamp(max=100.0)


def foreground_psnr(pred: Tensor, gt: Tensor, background: Tensor, threshold: float = 0.05) -> Tensor:
    """PSNR over the pixels where the ground truth or the forecast differs from the background: what moves,
    and whatever the forecast draws elsewhere (a spurious object is an error too).

    background: (C, H, W) e.g. the per-pixel median of training frames. Frames where neither differs
    from the background get NaN."""
    bg = _unit(background)

    def differs(x: Tensor) -> Tensor:
        return (_unit(x) - bg).abs().amax(-3, keepdim=True) > threshold  # (..., 1, H, W)

    fg = (differs(gt) | differs(pred)).float()
    err = ((_unit(pred) - _unit(gt)) ** 2 * fg).flatten(-3).sum(-1)
    n = (fg.flatten(-3).sum(-1) * pred.shape[-3]).clamp_min(1)
    out = -10 * torch.log10((err / n).clamp_min(1e-10))
    return torch.where(fg.flatten(-3).sum(-1) > 0, out.clamp(max=100.0), torch.full_like(out, float("nan")))


def ssim(pred: Tensor, gt: Tensor, window: int = 7) -> Tensor:
    """Per-frame SSIM (Gaussian window, sigma 1.5) on [0, 1] pixels: (..., C, H, W) -> (...)."""
    x, y = _unit(pred), _unit(gt)
    lead, (C, H, W) = x.shape[:-3], x.shape[-3:]
    x, y = x.reshape(-1, C, H, W), y.reshape(-1, C, H, W)
    g = torch.exp(-((torch.arange(window, dtype=torch.float32) - window // 2) ** 2) / (2 * 1.5**2))
    g = (g / g.sum()).to(x.device)
    k = (g[:, None] * g[None, :]).expand(C, 1, window, window)

    def blur(z):
        return F.conv2d(z, k, groups=C)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1).reshape(lead)


def skill(model_mse: Tensor, reference_mse: Tensor) -> Tensor:
    """1 - MSE(model) / MSE(reference): 1 is perfect, 0 is no better than the reference."""
    return 1 - model_mse / reference_mse.clamp_min(1e-12)


def mean_stderr(x: Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean over the first dimension (NaNs ignored)."""
    x = x.float().flatten()
    x = x[~torch.isnan(x)]
    n = x.numel()
    if n == 0:
        return float("nan"), float("nan")
    se = x.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")
    return x.mean().item(), se


def persistence_forecast(context: Tensor, frames: int) -> Tensor:
    """Copy the last context frame: (B, Fctx, C, H, W) -> (B, frames, C, H, W)."""
    return context[:, -1:].expand(-1, frames, -1, -1, -1)


def mean_frame_forecast(mean_frame: Tensor, batch: int, frames: int) -> Tensor:
    """The mean training frame at every step: (C, H, W) -> (B, frames, C, H, W)."""
    return mean_frame.expand(batch, frames, *mean_frame.shape)
