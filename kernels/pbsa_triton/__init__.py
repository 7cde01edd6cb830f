"""PBSA in Triton: forward (out + lse), backward dQ over row lists, dK/dV over slot lists.

- ``forward``: the forward kernel and its launch.
- ``backward``: the dQ and dK/dV kernels, the delta kernel they read, and their launch.
- ``lists``: the slot lists as the kernels read them (packed with lengths, transposed), on the host and
  inside the kernels.
- ``tuner``: which candidate launch configuration each kernel runs, per problem class (``choices()``,
  ``reset()``).
- ``op``: ``torch.ops.worldkit.pbsa_fwd`` with autograd through ``worldkit::pbsa_bwd``, and
  ``pbsa_triton``, whose eager calls skip the op's dispatch.
- ``common``: what the launches share (tile, dot precision, input checks).
"""
from .op import pbsa_bwd, pbsa_fwd, pbsa_triton

__all__ = ["pbsa_bwd", "pbsa_fwd", "pbsa_triton"]
