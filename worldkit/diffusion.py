"""Flow matching: noising, the few-step schedule, and turning a prediction into a clean estimate.

Convention: ``x_t = (1 - t) * x0 + t * eps`` with ``t`` in [0, 1] (``t = 1`` is pure noise). The
model predicts either ``x0`` directly or the velocity ``v = eps - x0``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def add_noise(x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x0, eps: (B, F, C, H, W); t: (B, F) -> x_t."""
    t = t[..., None, None, None]
    return (1 - t) * x0 + t * eps


def schedule(steps: int, shift: float = 1.0, device=None) -> Tensor:
    """Noise levels of a ``steps``-step sampler, (steps + 1,) from 1 down to 0.

    ``shift`` > 1 spends more of the steps at high noise (the SD3 / Wan time shift)."""
    s = torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64)
    t = shift * s / (1 + (shift - 1) * s)
    return t.to(torch.float32)


def to_x0(pred: Tensor, x_t: Tensor, t: Tensor, prediction: str) -> Tensor:
    """The clean estimate from a model output. pred, x_t: (B, F, C, H, W); t: (B, F)."""
    if prediction == "x0":
        return pred
    return x_t - t[..., None, None, None] * pred  # v = eps - x0  =>  x0 = x_t - t v


def target(x0: Tensor, eps: Tensor, prediction: str) -> Tensor:
    """What the model is trained to output."""
    return x0 if prediction == "x0" else eps - x0


def step(x0_hat: Tensor, x_t: Tensor, t: Tensor, t_next: Tensor, eps_new: Tensor | None) -> Tensor:
    """Move from level t to t_next given the clean estimate.

    With ``eps_new`` the chunk is re-noised with fresh noise (few-step, Self-Forcing style); without,
    the noise implied by x_t is reused (a deterministic DDIM-like step). t, t_next: (B, F)."""
    tt = t[..., None, None, None]
    tn = t_next[..., None, None, None]
    if eps_new is None:
        eps_new = (x_t - (1 - tt) * x0_hat) / tt.clamp_min(1e-6)
    return (1 - tn) * x0_hat + tn * eps_new
