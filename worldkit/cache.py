"""The block-paged KV cache shared by memory policies.

One slot pool per cache: ``k, v`` of shape (L, B, NS, H, BLK, D); a slot holds one spatial block of
one frame. Three regions, each a table of slot ids shared by the whole batch:

- sink: the blocks of the first ``sink_frames`` frames, never evicted;
- persistent: up to ``persistent_blocks`` blocks whose *contents* a policy may replace (per layer and
  batch element) when the window slides; see ``on_evict``;
- local: a ring of the most recent frames (``history_frames`` of them, or unbounded).

A bounded layout preallocates every slot at ``reset``, so memory stays flat over any horizon; an
unbounded one grows its pool by doubling. ``nbytes`` counts the slots in use, exactly.
Keys are stored without their temporal rotation; ``positions`` says where each slot is read.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from worldkit.interfaces import CacheSpec, KVView, MemoryPolicy


def chunk_to_blocks(x: Tensor, block_tokens: int) -> Tensor:
    """(L, B, H, T, D) block-major tokens -> (L, B, T // BLK, H, BLK, D) blocks."""
    L, B, H, T, D = x.shape
    return x.reshape(L, B, H, T // block_tokens, block_tokens, D).permute(0, 1, 3, 2, 4, 5)


class BlockMemory(MemoryPolicy):
    """A memory policy laid out as sink + persistent + local ring over one slot pool.

    Subclasses choose the layout through ``layout()`` and may override ``on_evict`` (what happens to
    blocks leaving the window) and ``sink_shift`` / ``persistent_pos`` (read-time positions).
    """

    # An unbounded pool's first size in slots, where more than four chunks' worth: a caller that knows
    # its horizon (a benchmark) skips the doubling, whose copy holds the old and the new pool at once.
    reserve_slots: Optional[int] = None

    # ---- what a subclass chooses --------------------------------------------------------------
    def layout(self, spec: CacheSpec) -> tuple[int, Optional[int], int]:
        """(sink_frames, history_frames or None for unbounded, persistent_blocks)."""
        raise NotImplementedError

    def on_evict(self, k: Tensor, v: Tensor, frame: Tensor, block: Tensor, pooled_q: Tensor) -> None:
        """Blocks leaving the local window: k, v (L, B, n, H, BLK, D); frame, block (n,) long.
        Default: dropped."""

    def sink_shift(self, query_frame: int) -> float:
        """How far the sink is moved forward in time when read by a chunk starting at ``query_frame``."""
        return 0.0

    # ---- machinery ----------------------------------------------------------------------------
    def reset(self, spec: CacheSpec) -> None:
        self.spec = spec
        self.sink_frames, self.history_frames, self.persistent_cap = self.layout(spec)
        nb = spec.blocks_per_frame
        self.n_sink_slots = self.sink_frames * nb
        self.p_base = self.n_sink_slots
        self.ring_base = self.p_base + self.persistent_cap
        ring_cap = None if self.history_frames is None else self.history_frames * nb
        self.ring_cap = ring_cap
        first = max(4 * spec.chunk_blocks, self.reserve_slots or 0)  # an unbounded pool's first size
        capacity = self.ring_base + (ring_cap if ring_cap is not None else first)
        shape = (spec.layers, spec.batch, capacity, spec.heads, spec.block_tokens, spec.head_dim)
        self.k = torch.zeros(shape, dtype=spec.dtype, device=spec.device)
        self.v = torch.zeros(shape, dtype=spec.dtype, device=spec.device)
        meta = (spec.layers, spec.batch, capacity)
        self.slot_frame = torch.full(meta, -1, dtype=torch.long, device=spec.device)
        self.slot_block = torch.full(meta, -1, dtype=torch.long, device=spec.device)
        self.n_sink = 0  # sink slots filled
        self.n_persistent = 0  # persistent slots filled
        self.ring: list[int] = []  # local slot ids, oldest first
        self.free: list[int] = list(range(self.ring_base, capacity))
        self.frames_seen = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def _grow(self, need: int) -> None:
        old = self.capacity
        new = max(2 * old, old + need)
        pad = new - old

        def extend(t: Tensor, fill) -> Tensor:
            extra = torch.full((*t.shape[:2], pad, *t.shape[3:]), fill, dtype=t.dtype, device=t.device)
            return torch.cat([t, extra], dim=2)

        self.k, self.v = extend(self.k, 0), extend(self.v, 0)
        self.slot_frame, self.slot_block = extend(self.slot_frame, -1), extend(self.slot_block, -1)
        self.free.extend(range(old, new))

    def _write(self, slots: list[int], k: Tensor, v: Tensor, frame: Tensor, block: Tensor) -> None:
        """k, v: (L, B, n, H, BLK, D) written to ``slots`` (n,) for every layer and batch element."""
        idx = torch.tensor(slots, dtype=torch.long, device=self.k.device)
        self.k[:, :, idx] = k.to(self.k.dtype)
        self.v[:, :, idx] = v.to(self.v.dtype)
        self.slot_frame[:, :, idx] = frame.to(self.k.device)
        self.slot_block[:, :, idx] = block.to(self.k.device)

    @torch.no_grad()
    def commit(self, k: Tensor, v: Tensor, pooled_q: Tensor) -> None:
        spec = self.spec
        nb = spec.blocks_per_frame
        kb = chunk_to_blocks(k.detach(), spec.block_tokens)  # (L, B, n, H, BLK, D)
        vb = chunk_to_blocks(v.detach(), spec.block_tokens)
        n = kb.shape[2]
        frames = self.frames_seen + torch.arange(n, device=kb.device) // nb  # (n,)
        blocks = torch.arange(n, device=kb.device) % nb  # (n,)
        self.frames_seen += n // nb

        is_sink = frames < self.sink_frames
        if is_sink.any():
            sel = is_sink.nonzero().squeeze(1)
            slots = (frames[sel] * nb + blocks[sel]).tolist()
            self._write(slots, kb[:, :, sel], vb[:, :, sel], frames[sel], blocks[sel])
            self.n_sink = max(self.n_sink, max(slots) + 1)
        new = (~is_sink).nonzero().squeeze(1)  # (m,) chunk blocks that go to the ring
        m = new.numel()
        if m == 0:
            return
        if self.ring_cap is None:
            if len(self.free) < m:
                self._grow(m - len(self.free))
            keep = new
        else:
            overflow = max(0, len(self.ring) + m - self.ring_cap)
            from_ring = min(overflow, len(self.ring))
            from_new = overflow - from_ring
            old_slots, self.ring = self.ring[:from_ring], self.ring[from_ring:]
            old_idx = torch.tensor(old_slots, dtype=torch.long, device=kb.device)
            drop_new, keep = new[:from_new], new[from_new:]
            if overflow:
                ev_k = torch.cat([self.k[:, :, old_idx], kb[:, :, drop_new].to(self.k.dtype)], dim=2)
                ev_v = torch.cat([self.v[:, :, old_idx], vb[:, :, drop_new].to(self.v.dtype)], dim=2)
                ev_frame = torch.cat([self.slot_frame[0, 0, old_idx], frames[drop_new]])
                ev_block = torch.cat([self.slot_block[0, 0, old_idx], blocks[drop_new]])
                self.on_evict(ev_k, ev_v, ev_frame, ev_block, pooled_q)
            self.free = old_slots + self.free
        slots, self.free = self.free[: keep.numel()], self.free[keep.numel() :]
        self._write(slots, kb[:, :, keep], vb[:, :, keep], frames[keep], blocks[keep])
        self.ring.extend(slots)

    def positions(self, layer: int) -> Tensor:
        """(B, NS) float read-time temporal position of every slot: its frame index, the sink moved
        by ``sink_shift`` and persistent blocks placed by ``persistent_pos``."""
        pos = self.slot_frame[layer].to(torch.float32).clone()  # (B, NS)
        if self.n_sink:
            pos[:, : self.n_sink] += self.sink_shift(self.frames_seen)
        if self.n_persistent:
            sl = slice(self.p_base, self.p_base + self.n_persistent)
            pos[:, sl] = self.persistent_pos(layer, pos[:, sl])
        return pos

    def persistent_pos(self, layer: int, frame_pos: Tensor) -> Tensor:
        """Read-time positions of the persistent blocks, given their frame positions (B, n)."""
        return frame_pos

    def view(self, layer: int) -> KVView:
        dev = self.k.device
        return KVView(
            k=self.k[layer],
            v=self.v[layer],
            slot_pos=self.positions(layer),
            slot_frame=self.slot_frame[layer],
            slot_block=self.slot_block[layer],
            sink=torch.arange(self.n_sink, device=dev),
            persistent=torch.arange(self.p_base, self.p_base + self.n_persistent, device=dev),
            local=torch.tensor(self.ring, dtype=torch.long, device=dev),
            query_pos=float(self.frames_seen),
        )

    def slots_in_use(self) -> int:
        return self.n_sink + self.n_persistent + len(self.ring)

    def nbytes(self) -> int:
        s = self.spec
        per_slot = 2 * s.layers * s.batch * s.heads * s.block_tokens * s.head_dim * self.k.element_size()
        return self.slots_in_use() * per_slot

    # ---- the policy as a mask, for parallel training -------------------------------------------
    def visibility(self, num_frames: int):
        """Chunk-causal visibility of this layout; ``None`` when a persistent set is kept."""
        if self.persistent_cap:
            return None
        fc = self.spec.chunk_frames
        sink, hist = self.sink_frames, self.history_frames  # the layout chosen at reset
        n_chunks = -(-num_frames // fc)
        j = torch.arange(num_frames)
        visible = torch.zeros(n_chunks, num_frames, dtype=torch.bool)
        key_pos = j.to(torch.float32).repeat(n_chunks, 1)
        for c in range(n_chunks):
            start = c * fc
            past = j < start
            in_window = past & (j >= sink) & ((j >= start - hist) if hist is not None else True)
            visible[c] = (past & (j < sink)) | in_window | ((j >= start) & (j < start + fc))
            key_pos[c, j < sink] += self.sink_shift(start)
        return visible, key_pos
