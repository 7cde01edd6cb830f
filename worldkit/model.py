"""A causal video diffusion transformer (DiT) for action-conditioned world models.

patchify -> N x [AdaLN(noise level, action) -> attention -> AdaLN -> MLP] -> unpatchify.

Attention is delegated to a context object, so one model serves both paths:

- ``ParallelContext``: a whole clip at once under a frame-level visibility mask (teacher and diffusion
  forcing, the reference for cached rollouts);
- ``ChunkContext``: one chunk against the KV cache of a memory policy, through a block selector and an
  attention backend (rollouts, self forcing).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldkit.interfaces import AttentionBackend, BlockSelector, CacheSpec, MemoryPolicy
from worldkit.rope import Rope3D


def _pair(x) -> tuple[int, int]:
    """A side (square) or a (height, width) pair, as a pair."""
    return (int(x), int(x)) if isinstance(x, int) else (int(x[0]), int(x[1]))


@dataclass(frozen=True)
class Geometry:
    """How frames become tokens and blocks. ``frame_size`` (pixels) and ``block_patches`` (patches) are
    a side, for square frames and blocks, or a (height, width) pair (e.g. Wan2.1's 30 x 52 latent grid)."""

    frame_size: Union[int, tuple[int, int]]
    patch: int
    block_patches: Union[int, tuple[int, int]]
    channels: int = 3

    @property
    def frame_hw(self) -> tuple[int, int]:
        return _pair(self.frame_size)

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(rows, columns) of patches in a frame."""
        h, w = self.frame_hw
        return h // self.patch, w // self.patch

    @property
    def block_hw(self) -> tuple[int, int]:
        return _pair(self.block_patches)

    @property
    def grid(self) -> int:
        """Patches per side of a square frame."""
        gh, gw = self.grid_hw
        if gh != gw:
            raise ValueError(f"a frame of {gh} x {gw} patches has no single side: use grid_hw")
        return gh

    @property
    def tokens_per_frame(self) -> int:
        gh, gw = self.grid_hw
        return gh * gw

    @property
    def block_tokens(self) -> int:
        bh, bw = self.block_hw
        return bh * bw

    @property
    def blocks_per_frame(self) -> int:
        return self.tokens_per_frame // self.block_tokens

    def token_order(self) -> tuple[Tensor, Tensor, Tensor]:
        """Block-major token order: (perm, rows, cols), each (N,). ``perm[i]`` is the raster index of
        token i; tokens of one spatial block are contiguous (blocks in raster order, and so are the
        tokens within a block)."""
        (gh, gw), (bh, bw) = self.grid_hw, self.block_hw
        r = torch.arange(gh).view(gh // bh, bh, 1, 1)
        c = torch.arange(gw).view(1, 1, gw // bw, bw)
        rows = r.expand(gh // bh, bh, gw // bw, bw).permute(0, 2, 1, 3).reshape(-1)
        cols = c.expand(gh // bh, bh, gw // bw, bw).permute(0, 2, 1, 3).reshape(-1)
        return rows * gw + cols, rows, cols


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of noise levels t in [0, 1]: (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1).to(t.dtype if t.is_floating_point() else torch.float32)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def pool_blocks(x: Tensor, block_tokens: int) -> Tensor:
    """Mean of each block of tokens: (B, H, T, D) -> (B, H, T // BLK, D)."""
    B, H, T, D = x.shape
    return x.view(B, H, T // block_tokens, block_tokens, D).mean(3)


# --------------------------------------------------------------------------------------------------
# attention contexts


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Dense attention under a boolean mask (True = visible). q (B, H, Tq, D), k/v (B, H, Tk, D).
    Rows with nothing visible give zeros."""
    if mask is not None and not bool(mask.any(-1).all()):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return torch.where(mask.any(-1, keepdim=True), out, torch.zeros_like(out))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@dataclass
class ParallelContext:
    """A whole clip at once. ``visible`` (Fq, Fk) frame mask; ``q_pos`` (Fq,) positions of the query
    frames; ``k_pos`` (Fq, Fk) the position at which each query frame reads each key frame, or None to
    read every key frame at ``q_pos`` (queries and keys are then the same frames)."""

    visible: Tensor
    q_pos: Tensor
    k_pos: Optional[Tensor] = None

    def attend(self, model: "WorldModel", layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v: (B, H, F * N, D) spatially rotated, no temporal rotation yet."""
        n = model.geometry.tokens_per_frame
        q_tok_pos = self.q_pos.repeat_interleave(n).to(q.device)  # (F*N,)
        qr = model.rope.rotate_time(q, q_tok_pos)
        tok_mask = self.visible.to(q.device).repeat_interleave(n, 0).repeat_interleave(n, 1)  # (Tq, Tk)
        if self.k_pos is None or bool((self.k_pos == self.k_pos[0]).all()):
            k_pos = q_tok_pos if self.k_pos is None else self.k_pos[0].to(q.device).repeat_interleave(n)
            return masked_attention(qr, model.rope.rotate_time(k, k_pos), v, tok_mask)
        # key positions depend on the query frame: one attention per group of query frames that
        # read the keys at the same positions under the same mask (a chunk, for built-in policies)
        out = torch.empty_like(q)
        k_pos = self.k_pos.to(q.device, torch.float32)
        key = torch.cat([k_pos, self.visible.to(q.device, torch.float32)], dim=1)  # (Fq, 2 Fk)
        groups = torch.unique(key, dim=0, return_inverse=True)[1]  # (Fq,)
        for g in groups.unique().tolist():
            frames = (groups == g).nonzero().squeeze(1)  # query frames of this group
            rows = (frames[:, None] * n + torch.arange(n, device=q.device)).reshape(-1)  # their tokens
            kr = model.rope.rotate_time(k, k_pos[frames[0]].repeat_interleave(n))
            out[:, :, rows] = masked_attention(qr[:, :, rows], kr, v, tok_mask[rows])
        return out


@dataclass
class ChunkContext:
    """One chunk against a memory policy's cache. With ``collect`` the chunk's keys (no temporal
    rotation), values and block-pooled queries are kept per layer for ``memory.commit``."""

    memory: MemoryPolicy
    selector: BlockSelector
    backend: AttentionBackend
    collect: bool = False
    kept: dict = field(default_factory=dict)
    hook: Optional[callable] = None  # called as hook(layer, q, k, view, index), e.g. for analysis

    def attend(self, model: "WorldModel", layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        geo = model.geometry
        n, blk = geo.tokens_per_frame, geo.block_tokens
        if self.collect:
            self.kept[layer] = (k, v, pool_blocks(q, blk))
        view = self.memory.view(layer)
        frames = q.shape[2] // n
        tok_pos = (view.query_pos + torch.arange(frames, device=q.device, dtype=torch.float32)).repeat_interleave(n)
        qr = model.rope.rotate_time(q, tok_pos)  # (B, H, Tq, D)
        kr = model.rope.rotate_time(k, tok_pos)
        pool_k = model.rope.rotate_time(view.k, view.slot_pos[:, :, None, None])  # (B, NS, H, BLK, D)
        view = replace(view, k=pool_k)
        local_k = pool_k[:, view.local].mean(3).transpose(1, 2)  # (B, H, NL, D)
        cand_k = torch.cat([local_k, pool_blocks(kr, blk)], dim=2)  # (B, H, NL + NQB, D)
        nqb = q.shape[2] // blk
        own = torch.arange(nqb, device=q.device) + view.local.numel()
        index = self.selector.select(pool_blocks(qr, blk), cand_k, own)
        if self.hook is not None:
            self.hook(layer, qr, kr, view, index)
        return self.backend.attend(qr, kr, v, view, index)

    def kv_for_commit(self) -> tuple[Tensor, Tensor, Tensor]:
        """Stacked over layers: k, v (L, B, H, Tc, D) and pooled queries (L, B, H, NQB, D)."""
        layers = sorted(self.kept)
        k, v, pq = (torch.stack([self.kept[i][j] for i in layers]) for j in range(3))
        return k, v, pq


# --------------------------------------------------------------------------------------------------
# the model


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.q_norm = RMSNorm(width // heads)
        self.k_norm = RMSNorm(width // heads)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, model: "WorldModel", layer: int, ctx) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        q, k = self.q_norm(q), self.k_norm(k)
        rows, cols = model.token_rows_cols(T)
        q = model.rope.rotate_space(q, rows, cols)
        k = model.rope.rotate_space(k, rows, cols)
        o = ctx.attend(model, layer, q, k, v)  # (B, H, T, D)
        return self.out(o.transpose(1, 2).reshape(B, T, C))


class DiTBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor, model: "WorldModel", layer: int, ctx) -> Tensor:
        """x: (B, F, N, C) tokens; c: (B, F, 1, C) per-frame conditioning."""
        B, Fr, N, C = x.shape
        s1, b1, g1, s2, b2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)  # each (B, F, 1, C)
        h = self.norm1(x) * (1 + s1) + b1
        x = x + g1 * self.attn(h.reshape(B, Fr * N, C), model, layer, ctx).view(B, Fr, N, C)
        h = self.norm2(x) * (1 + s2) + b2
        return x + g2 * self.mlp(h)


class WorldModel(nn.Module):
    """Predicts a chunk of frames from noisy frames, noise levels, actions and attention context."""

    def __init__(
        self,
        frame_size: Union[int, tuple[int, int]],
        action_dim: int,
        patch: int = 8,
        width: int = 128,
        layers: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        block_patches: int = 2,
        chunk_frames: int = 2,
        prediction: str = "x0",
        channels: int = 3,
    ):
        super().__init__()
        (fh, fw), (bh, bw) = _pair(frame_size), _pair(block_patches)
        if fh % patch or fw % patch or (fh // patch) % bh or (fw // patch) % bw:
            raise ValueError(
                f"frame size {frame_size} must be a multiple of patch ({patch}) x block_patches ({block_patches})"
            )
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.geometry = Geometry(frame_size, patch, block_patches, channels)
        self.hparams = dict(
            frame_size=frame_size, action_dim=action_dim, patch=patch, width=width, layers=layers,
            heads=heads, mlp_ratio=mlp_ratio, block_patches=block_patches, chunk_frames=chunk_frames,
            prediction=prediction, channels=channels,
        )
        self.chunk_frames = chunk_frames
        self.prediction = prediction
        self.heads = heads
        self.head_dim = width // heads
        self.rope = Rope3D(self.head_dim)
        perm, rows, cols = self.geometry.token_order()
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(perm), persistent=False)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        pdim = channels * patch * patch
        self.embed = nn.Linear(pdim, width)
        self.t_embed = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.a_embed = nn.Sequential(nn.Linear(action_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Linear(width, 2 * width)
        self.final = nn.Linear(width, pdim)
        nn.init.zeros_(self.final_ada.weight)
        nn.init.zeros_(self.final_ada.bias)

    # ---- token plumbing -----------------------------------------------------------------------
    def token_rows_cols(self, T: int) -> tuple[Tensor, Tensor]:
        reps = T // self.geometry.tokens_per_frame
        return self.rows.repeat(reps), self.cols.repeat(reps)

    def patchify(self, x: Tensor) -> Tensor:
        """(B, F, C, H, W) -> (B, F, N, C*p*p), tokens block-major."""
        p = self.geometry.patch
        B, Fr, C, H, W = x.shape
        t = x.reshape(B, Fr, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        t = t.reshape(B, Fr, (H // p) * (W // p), C * p * p)
        return t[:, :, self.perm]

    def unpatchify(self, t: Tensor) -> Tensor:
        """(B, F, N, C*p*p) block-major -> (B, F, C, H, W)."""
        (gh, gw), p, C = self.geometry.grid_hw, self.geometry.patch, self.geometry.channels
        B, Fr = t.shape[:2]
        t = t[:, :, self.inv_perm].reshape(B, Fr, gh, gw, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return t.reshape(B, Fr, C, gh * p, gw * p)

    def cache_spec(self, batch: int, train_frames: int, dtype=None, device=None) -> CacheSpec:
        geo = self.geometry
        return CacheSpec(
            layers=len(self.blocks), batch=batch, heads=self.heads, head_dim=self.head_dim,
            block_tokens=geo.block_tokens, blocks_per_frame=geo.blocks_per_frame,
            chunk_frames=self.chunk_frames, train_frames=train_frames,
            dtype=dtype or next(self.parameters()).dtype, device=device or next(self.parameters()).device,
        )

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, actions: Tensor, ctx) -> Tensor:
        """x: (B, F, C, H, W) noisy frames; t: (B, F) noise levels; actions: (B, F, A). -> (B, F, C, H, W)."""
        h = self.embed(self.patchify(x))  # (B, F, N, width)
        c = self.t_embed(timestep_embedding(t, 256)) + self.a_embed(actions)  # (B, F, width)
        c = c.unsqueeze(2)  # (B, F, 1, width)
        for i, block in enumerate(self.blocks):
            h = block(h, c, self, i, ctx)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        h = self.final_norm(h) * (1 + scale) + shift
        return self.unpatchify(self.final(h))
