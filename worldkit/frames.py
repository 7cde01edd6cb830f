"""Frames as stored (uint8 ``(..., H, W, 3)``) and as the model reads them (float ``(..., 3, H, W)`` in [-1, 1])."""
import numpy as np
import torch
from torch import Tensor


def frames_to_tensor(frames: np.ndarray) -> Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1
    return t.movedim(-1, -3)


def tensor_to_frames(x: Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()
