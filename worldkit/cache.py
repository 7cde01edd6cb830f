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

A policy is a subclass that fills in hooks (``layout``, ``keeps_chunk``, ``on_evict``, ``sink_shift``,
``persistent_pos``) and changes the persistent region only through ``keep_persistent``; it never writes
the pool or the tables itself. ``docs/design.md`` ("Writing a memory policy") walks through them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from worldkit.interfaces import CacheSpec, KVView, MemoryPolicy


def chunk_to_blocks(x: Tensor, block_tokens: int) -> Tensor:
    """(L, B, H, T, D) block-major tokens -> (L, B, T // BLK, H, BLK, D) blocks."""
    L, B, H, T, D = x.shape
    return x.reshape(L, B, H, T // block_tokens, block_tokens, D).permute(0, 1, 3, 2, 4, 5)


class Layout(NamedTuple):
    """The regions of a cache, chosen once per ``reset`` by ``BlockMemory.layout``."""

    sink_frames: int = 0  # first frames kept for ever
    history_frames: Optional[int] = None  # cached frames behind the chunk in the local ring; None = unbounded
    persistent_blocks: int = 0  # capacity of the persistent region, in blocks


@dataclass
class Blocks:
    """Cache blocks as a policy's hooks see them, per layer and batch element.

    k, v: (L, B, n, H, BLK, D); frame, block: (L, B, n) long, the episode frame and the spatial block
    each came from."""

    k: Tensor
    v: Tensor
    frame: Tensor
    block: Tensor

    def __len__(self) -> int:
        return self.k.shape[2]

    def cat(self, other: "Blocks") -> "Blocks":
        """These blocks, then ``other``'s."""
        return Blocks(*(torch.cat([a, b], dim=2) for a, b in zip(self._fields(), other._fields())))

    def take(self, idx: Tensor) -> "Blocks":
        """The blocks at ``idx``: (n,) the same for every layer and batch element, or (L, B, n) per row."""
        if idx.dim() == 1:
            return Blocks(*(x[:, :, idx.to(x.device)] for x in self._fields()))
        L, B, n = idx.shape

        def gather(x: Tensor) -> Tensor:
            i = idx.view(L, B, n, *([1] * (x.dim() - 3))).expand(L, B, n, *x.shape[3:])
            return x.gather(2, i)

        return Blocks(*(gather(x) for x in self._fields()))

    def _fields(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.k, self.v, self.frame, self.block


class BlockMemory(MemoryPolicy):
    """A memory policy laid out as sink + persistent + local ring over one slot pool.

    Subclasses choose the layout through ``layout()`` and may override ``keeps_chunk`` (which committed
    chunks enter the cache), ``on_evict`` (what happens to blocks leaving the window, through
    ``persistent()`` and ``keep_persistent()``) and ``sink_shift`` / ``persistent_pos`` (read-time
    positions). ``visibility()`` follows from these for a layout without a persistent region. The pool and
    its tables (``k``, ``v``, ``slot_frame``, ``slot_block``, ``ring``, ``frames_seen``, ...) are for
    reading; only the machinery here writes them.
    """

    # An unbounded pool's first size in slots, where more than four chunks' worth: a caller that knows
    # its horizon (a benchmark) skips the doubling, whose copy holds the old and the new pool at once.
    reserve_slots: Optional[int] = None

    # ---- what a subclass chooses --------------------------------------------------------------
    def layout(self, spec: CacheSpec) -> Layout:
        """The regions for ``spec``: a ``Layout`` (or the plain tuple (sink_frames, history_frames or
        None for unbounded, persistent_blocks))."""
        raise NotImplementedError

    def keeps_chunk(self, chunk: int) -> bool:
        """Whether the ``chunk``-th commit (0, 1, 2, ...) enters the cache; one it refuses only advances
        time (its frames are skipped, none of its blocks is held). A function of the index alone, so that
        ``visibility()`` can replay it. Default: every chunk."""
        return True

    def on_evict(self, evicted: Blocks, pooled_q: Tensor) -> None:
        """Blocks leaving the local window, oldest first; pooled_q (L, B, H, NQB, D) the committed chunk's
        block-pooled queries. To keep some, call ``keep_persistent`` (with, say, a choice among
        ``self.persistent().cat(evicted)``). Default: dropped."""

    def sink_shift(self, query_frame: int) -> float:
        """How far the sink is moved forward in time when read by a chunk starting at ``query_frame``."""
        return 0.0

    def persistent_pos(self, layer: int, frame_pos: Tensor) -> Tensor:
        """Read-time positions of the persistent blocks, given their frame positions (B, n)."""
        return frame_pos

    # ---- what a hook may call -----------------------------------------------------------------
    def persistent(self) -> Blocks:
        """The persistent blocks held now, in slot order (views of the cache: read, never write)."""
        p = slice(self.p_base, self.p_base + self.n_persistent)
        return Blocks(self.k[:, :, p], self.v[:, :, p], self.slot_frame[:, :, p], self.slot_block[:, :, p])

    def keep_persistent(self, blocks: Blocks) -> None:
        """Make ``blocks`` (at most ``persistent_cap`` of them) the persistent set, in their order; what
        was persistent and is not among them is gone."""
        n = len(blocks)
        if n > self.persistent_cap:
            raise ValueError(f"{type(self).__name__}: {n} persistent blocks kept, capacity {self.persistent_cap}")
        dst = slice(self.p_base, self.p_base + n)
        self.k[:, :, dst] = blocks.k.to(self.k.dtype)
        self.v[:, :, dst] = blocks.v.to(self.v.dtype)
        self.slot_frame[:, :, dst] = blocks.frame.to(self.slot_frame.device)
        self.slot_block[:, :, dst] = blocks.block.to(self.slot_block.device)
        self.slot_frame[:, :, self.p_base + n : self.p_base + self.n_persistent] = -1
        self.slot_block[:, :, self.p_base + n : self.p_base + self.n_persistent] = -1
        self.n_persistent = n

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
        self.chunks_seen = 0  # commits so far, the index keeps_chunk is asked about

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
        chunk, self.chunks_seen = self.chunks_seen, self.chunks_seen + 1
        if not self.keeps_chunk(chunk):
            self.frames_seen += k.shape[3] // (spec.block_tokens * nb)
            return
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
                L, B = kb.shape[:2]
                ev_frame = torch.cat([self.slot_frame[0, 0, old_idx], frames[drop_new]])  # (n_ev,)
                ev_block = torch.cat([self.slot_block[0, 0, old_idx], blocks[drop_new]])
                evicted = Blocks(
                    torch.cat([self.k[:, :, old_idx], kb[:, :, drop_new].to(self.k.dtype)], dim=2),
                    torch.cat([self.v[:, :, old_idx], vb[:, :, drop_new].to(self.v.dtype)], dim=2),
                    ev_frame.expand(L, B, -1),
                    ev_block.expand(L, B, -1),
                )
                self.on_evict(evicted, pooled_q)
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

    def view(self, layer: int) -> KVView:
        dev = self.k.device
        sink = torch.arange(self.n_sink, device=dev)
        persistent = torch.arange(self.p_base, self.p_base + self.n_persistent, device=dev)
        return KVView(
            k=self.k[layer],
            v=self.v[layer],
            slot_pos=self.positions(layer),
            slot_frame=self.slot_frame[layer],
            slot_block=self.slot_block[layer],
            always=torch.cat([sink, persistent]),
            local=torch.tensor(self.ring, dtype=torch.long, device=dev),
            query_pos=float(self.frames_seen),
            regions={"sink": sink, "persistent": persistent},
        )

    def slots_in_use(self) -> int:
        return self.n_sink + self.n_persistent + len(self.ring)

    def nbytes(self) -> int:
        s = self.spec
        per_slot = 2 * s.layers * s.batch * s.heads * s.block_tokens * s.head_dim * self.k.element_size()
        return self.slots_in_use() * per_slot

    # ---- the policy as a mask, for parallel training -------------------------------------------
    def visibility(self, num_frames: int):
        """The layout replayed on frame indices alone: query chunk c sees the frames the cache holds
        after chunks 0..c-1 (the sink, the ring, only chunks ``keeps_chunk`` lets in) and its own chunk,
        each at the position ``positions()`` reads it. ``None`` when a persistent region is kept: what it
        holds depends on the data."""
        if self.persistent_cap:
            return None
        fc, hist = self.spec.chunk_frames, self.history_frames  # the layout chosen at reset
        n_chunks = -(-num_frames // fc)
        visible = torch.zeros(n_chunks, num_frames, dtype=torch.bool)
        key_pos = torch.arange(num_frames, dtype=torch.float32).repeat(n_chunks, 1)
        sink: list[int] = []  # frames held, as commit() would hold them
        ring: list[int] = []
        for c in range(n_chunks):
            start = c * fc
            held = torch.tensor(sink + ring, dtype=torch.long)
            visible[c, held] = True
            visible[c, start : start + fc] = True
            key_pos[c, torch.tensor(sink, dtype=torch.long)] += self.sink_shift(start)
            if self.keeps_chunk(c):
                sink += [f for f in range(start, start + fc) if f < self.sink_frames]
                ring += [f for f in range(start, start + fc) if f >= self.sink_frames]
                if hist is not None:
                    ring = ring[max(0, len(ring) - hist) :] if hist else []
        return visible, key_pos
