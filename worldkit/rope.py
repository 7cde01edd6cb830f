"""Rotary positions over (time, row, column).

The head dimension is split into a temporal part and two spatial parts (the Wan2.1 split:
``D - 4 * (D // 6)`` for time, ``2 * (D // 6)`` each for rows and columns), each rotated in the
rotate-half convention. Spatial rotation never changes for a token, so it is applied once; the
temporal rotation is applied at read time, at the position the memory policy assigns. Rotations on
disjoint dimensions commute, so the order does not matter.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor


def split_dims(head_dim: int) -> tuple[int, int, int]:
    """(temporal, row, column) sizes of the head dimension; each even."""
    s = 2 * (head_dim // 6)
    t = head_dim - 2 * s
    if t % 2 or s % 2 == 1 or t <= 0:
        raise ValueError(f"head_dim {head_dim} cannot be split into even rotary parts")
    return t, s, s


@functools.lru_cache(maxsize=64)
def _freqs(dim: int, base: float, device: torch.device) -> Tensor:
    return 1.0 / base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)  # (dim/2,)


def _rotate(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate the last dim of x (..., d) by angles (..., d/2) broadcastable, rotate-half style."""
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Rope3D:
    """Rotary embedding of (time, row, column) positions for heads of size ``head_dim``."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        self.head_dim = head_dim
        self.dt, self.dh, self.dw = split_dims(head_dim)
        self.base = base

    def rotate_time(self, x: Tensor, pos: Tensor) -> Tensor:
        """x: (..., D); pos: float positions broadcastable to x.shape[:-1]. Rotates the temporal dims."""
        f = _freqs(self.dt, self.base, x.device)  # (dt/2,)
        angles = pos.to(torch.float64).unsqueeze(-1) * f  # (..., dt/2)
        xt = _rotate(x[..., : self.dt], angles)
        return torch.cat([xt, x[..., self.dt :]], dim=-1)

    def rotate_space(self, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """x: (..., T, D); rows, cols: (T,) patch coordinates of each token. Rotates the spatial dims."""
        fh = _freqs(self.dh, self.base, x.device)
        fw = _freqs(self.dw, self.base, x.device)
        ah = rows.to(torch.float64).unsqueeze(-1) * fh  # (T, dh/2)
        aw = cols.to(torch.float64).unsqueeze(-1) * fw  # (T, dw/2)
        xt, xh, xw = x.split([self.dt, self.dh, self.dw], dim=-1)
        return torch.cat([xt, _rotate(xh, ah), _rotate(xw, aw)], dim=-1)
