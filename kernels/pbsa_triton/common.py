"""What the PBSA kernels' launches share: the tile a block runs in, the dot precision, the input checks,
host-side powers of two."""
from __future__ import annotations

import torch
from torch import Tensor

LOG2E = 1.4426950408889634


def _pow2(n: int) -> int:
    """``triton.next_power_of_2`` in plain Python (that one is a constexpr function, slower to call on
    the host): the smallest power of two >= n, 0 for 0."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def _tile(BLK: int) -> int:
    """Rows of one block padded to a power of two >= 16 (the minimum tl.dot size)."""
    return max(16, _pow2(BLK))


def _prec(dtype: torch.dtype) -> str:
    """fp32 inputs stay fp32 in tl.dot (no TF32), half inputs use the tensor-core default."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _check(q: Tensor, k: Tensor, D: int) -> None:
    if D not in (16, 32, 64, 128, 256):
        raise ValueError(f"Triton PBSA needs head dim in 16..256, a power of two; got {D}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype:
        raise ValueError(f"Triton PBSA needs fp16/bf16/fp32 q, k, v of one dtype; got {q.dtype}, {k.dtype}")
