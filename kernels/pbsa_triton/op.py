"""PBSA in Triton as a PyTorch op: ``torch.ops.worldkit.pbsa_fwd`` with autograd through
``worldkit::pbsa_bwd`` (what torch.compile, export and dispatch modes trace), and ``pbsa_triton``, whose
eager calls run the same forward and backward through a plain autograd Function (``_Eager``), without
the custom op's dispatch.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .backward import _backward_lists
from .forward import _forward_lists


def _forward(
    q: Tensor, k: Tensor, v: Tensor, index: Tensor, count: Tensor, block_len: Optional[Tensor], scale: float
) -> tuple[Tensor, Tensor]:
    """Triton PBSA forward: out (B, H, Tq, D) in q.dtype, lse (B, H, Tq) fp32."""
    out, lse, _ = _forward_lists(q, k, v, index, count, block_len, scale)
    return out, lse


pbsa_fwd = torch.library.custom_op("worldkit::pbsa_fwd", _forward, mutates_args=())


@pbsa_fwd.register_fake
def _(q, k, v, index, count, block_len, scale):
    B, H, Tq, D = q.shape
    return torch.empty_like(q), q.new_empty(B, H, Tq, dtype=torch.float32)


def _backward_grads(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dlse: Optional[Tensor],
    index: Tensor, count: Tensor, block_len: Optional[Tensor], scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton PBSA backward: dq (B, H, Tq, D), dk and dv (B, NS, H, BLK, D), from dout and dlse (None:
    the log-sum-exp output was not used)."""
    return _backward_lists(do, q, k, v, out, lse, dlse, index, count, block_len, scale)


pbsa_bwd = torch.library.custom_op("worldkit::pbsa_bwd", _backward_grads, mutates_args=())


@pbsa_bwd.register_fake
def _(do, q, k, v, out, lse, dlse, index, count, block_len, scale):
    B, NS, H, BLK, D = k.shape
    return torch.empty_like(q), k.new_empty(B, NS, H, BLK, D), v.new_empty(B, NS, H, BLK, D)


def _setup_context(ctx, inputs, output, lists_read: tuple = ()):
    q, k, v, index, count, block_len, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, index, count, block_len, *lists_read)
    ctx.scale = scale
    ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None, not as zeros


def _backward_by(grads: Callable) -> Callable:
    """The backward of the forward's autograd, computing the gradients with ``grads``: the backward op,
    or ``_backward_lists`` given the lists the forward read (saved after the forward's inputs)."""

    def backward(ctx, dout, dlse):
        q, k, v, out, lse, index, count, block_len, *lists_read = ctx.saved_tensors
        if dout is None:  # only the log-sum-exp was used
            dout = torch.zeros_like(out)
        dq, dk, dv = grads(dout, q, k, v, out, lse, dlse, index, count, block_len, ctx.scale, *lists_read)
        return dq, dk, dv, None, None, None, None

    return backward


pbsa_fwd.register_autograd(_backward_by(pbsa_bwd), setup_context=_setup_context)


class _Eager(torch.autograd.Function):
    """The custom op's forward and backward without its dispatch, for eager calls (their host cost
    bounds short steps); traced code (torch.compile, export, or any dispatch mode such as fake tensors
    and make_fx) goes through ``worldkit::pbsa_fwd``. Differentiable once, as the op is."""

    @staticmethod
    def forward(ctx, q, k, v, index, count, block_len, scale):
        out, lse, lists_read = _forward_lists(q, k, v, index, count, block_len, scale)
        _setup_context(ctx, (q, k, v, index, count, block_len, scale), (out, lse), lists_read)
        return out, lse

    backward = staticmethod(once_differentiable(_backward_by(_backward_lists)))  # lists packed once, by the forward


def pbsa_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    index: Tensor,
    count: Tensor,
    block_len: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> tuple[Tensor, Tensor]:
    """PBSA through the Triton kernels (differentiable). Returns (out, lse)."""
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"Triton PBSA needs a positive softmax scale; got {scale}")
    index = index.to(torch.int32)
    count = count.to(torch.int32)
    block_len = None if block_len is None else block_len.to(torch.int32)
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():  # traced, or fake/meta tensors
        return pbsa_fwd(q, k, v, index, count, block_len, scale)
    return _Eager.apply(q, k, v, index, count, block_len, scale)
