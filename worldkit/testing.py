"""Contract tests a plugin package can run on its own plugins (worldkit runs them on its built-ins).

``check_memory_policy(cls, config)`` builds a memory policy on a small cache, commits random chunks for
several training clips' worth of frames and checks, after every commit, what every ``MemoryPolicy``
promises; ``check_visibility(policy, spec, num_frames)`` checks that a policy's parallel-training mask
agrees with what its rollout's views hold, chunk by chunk. Both raise ``AssertionError`` naming the policy
and what failed::

    from worldkit.testing import check_memory_policy

    def test_contract():
        check_memory_policy(EveryOther, {"max_chunks": 2})
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import torch
from torch import Tensor

from worldkit.interfaces import CacheSpec, KVView, MemoryPolicy

# A small cache with every size distinct from the others: 2 layers, a batch of 2, 2 heads, 3 blocks of
# 2 tokens per frame, 2-frame chunks, an 8-frame training clip.
SPEC = CacheSpec(layers=2, batch=2, heads=2, head_dim=4, block_tokens=2, blocks_per_frame=3, chunk_frames=2,
                 train_frames=8, dtype=torch.float32, device=torch.device("cpu"))


def random_chunk(spec: CacheSpec, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """What ``commit`` receives for one chunk, random and requiring grad (as in a training rollout):
    k, v (L, B, H, Tc, D) and pooled_q (L, B, H, NQB, D)."""
    tc = spec.chunk_blocks * spec.block_tokens
    shape = (spec.layers, spec.batch, spec.heads, tc, spec.head_dim)

    def draw(*size: int) -> Tensor:
        x = torch.randn(*size, generator=generator).to(dtype=spec.dtype, device=spec.device)
        return x.requires_grad_()

    return draw(*shape), draw(*shape), draw(spec.layers, spec.batch, spec.heads, spec.chunk_blocks, spec.head_dim)


def describe(policy: MemoryPolicy) -> str:
    """The policy's class and settings, as the messages name it."""
    config = getattr(policy, "config", None)
    settings = config.model_dump() if hasattr(config, "model_dump") else {}
    return f"{type(policy).__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"


def check_memory_policy(cls: type, config: Any = None, *, spec: Optional[CacheSpec] = None, clips: int = 4,
                        dtypes: tuple = (torch.float32, torch.float16), seed: int = 0) -> None:
    """Hold the memory policy ``cls`` (built from ``config``: a dict, its ``Config``, or None for the
    defaults) to the ``MemoryPolicy`` contract on ``spec`` (default ``SPEC``) at each of ``dtypes``,
    committing random chunks for ``clips`` training clips' worth of frames. After every commit, at every
    layer:

    - the view's shapes, dtypes and slot ids: k, v (B, NS, H, BLK, D) at the cache's dtype; slot tables
      (B, NS); always, local and the named regions 1-D ids within the pool (each region inside always),
      no slot listed twice, no block of a frame held twice in a batch row, only blocks of committed
      frames; ``query_pos`` the frames committed;
    - positions finite and before the chunk, and within ``max_read_distance()`` frames of its newest
      frame where the policy promises that bound;
    - ``nbytes()`` the bytes of the K and V the views expose, summed over layers; ``slots_in_use()`` (where
      the policy has it) the number of visible slots;
    - no gradient reaches the stored K and V (the committed chunk requires grad);

    and, where ``visibility()`` gives a mask, that it agrees with the views (``check_visibility``); that
    ``reset`` empties the cache and a reset policy holds what a fresh one holds after the same commits."""
    base = spec or SPEC
    for dtype in dtypes:
        s = replace(base, dtype=dtype)
        policy = _build(cls, config)
        _check_rollout(policy, s, clips, seed)
        policy.reset(s)
        if policy.visibility(clips * s.train_frames) is not None:
            check_visibility(_build(cls, config), s, clips * s.train_frames, seed=seed)


def check_visibility(policy: MemoryPolicy, spec: CacheSpec, num_frames: int, seed: int = 0) -> None:
    """The parallel-training mask ``policy.visibility(num_frames)`` shows query chunk c exactly the frames
    the rollout's ``view()`` holds before chunk c (every block of each, in every layer and batch row) plus
    its own chunk, each cached block at the position the view reads it; ``policy`` is reset on ``spec``
    and fed random chunks."""
    name = describe(policy)
    policy.reset(spec)
    mask = policy.visibility(num_frames)
    _require(mask is not None, name, "visibility() gives no mask to check")
    visible, key_pos = mask
    fc, nb = spec.chunk_frames, spec.blocks_per_frame
    n_chunks = -(-num_frames // fc)
    _require(tuple(visible.shape) == tuple(key_pos.shape) == (n_chunks, num_frames), name,
             f"visibility({num_frames}) gives shapes {tuple(visible.shape)} and {tuple(key_pos.shape)}, "
             f"not ({n_chunks}, {num_frames}) (query chunks, frames)")
    g = torch.Generator().manual_seed(seed)
    for c in range(n_chunks):
        start = c * fc
        shown = set(visible[c].nonzero().squeeze(1).tolist())
        own = set(range(start, min(start + fc, num_frames)))
        _require(own <= shown, name, f"the mask hides part of query chunk {c} from itself: frames {sorted(own - shown)}")
        want = sorted((f, b) for f in shown - own for b in range(nb))
        for layer in range(spec.layers):
            view = policy.view(layer)
            where = f"before chunk {c}, layer {layer}"
            _require(view.query_pos == start, name, f"{where}: query_pos {view.query_pos}, the mask puts chunk {c} at {start}")
            ids = view.visible
            for b in range(spec.batch):
                held = sorted(zip(view.slot_frame[b, ids].tolist(), view.slot_block[b, ids].tolist()))
                _require(held == want, name,
                         f"{where}, batch row {b}: the mask shows frames {sorted(shown - own)} before the chunk, "
                         f"the view holds (frame, block) {held}")
                for slot, frame in zip(ids.tolist(), view.slot_frame[b, ids].tolist()):
                    got, mask_pos = float(view.slot_pos[b, slot]), float(key_pos[c, frame])
                    _require(got == mask_pos, name, f"{where}, batch row {b}: frame {frame} is read at {got}, "
                                                    f"the mask puts it at {mask_pos}")
        policy.commit(*random_chunk(spec, g))


# ---- the pieces of check_memory_policy ----------------------------------------------------------------
def _require(ok: bool, name: str, what: str) -> None:
    if not ok:
        raise AssertionError(f"memory policy {name}: {what}")


def _build(cls: type, config: Any) -> MemoryPolicy:
    if not (isinstance(cls, type) and issubclass(cls, MemoryPolicy)):
        raise AssertionError(f"{cls!r} is not a worldkit.interfaces.MemoryPolicy subclass")
    if config is None or isinstance(config, dict):
        config = cls.Config.model_validate(config or {})
    return cls(config)


def _check_rollout(policy: MemoryPolicy, spec: CacheSpec, clips: int, seed: int) -> None:
    name = f"{describe(policy)} at {spec.dtype}"
    policy.reset(spec)
    _check_empty(policy, spec, name, "after reset")
    bound = policy.max_read_distance()
    g = torch.Generator().manual_seed(seed)
    first = []  # what the first two commits leave, to compare with a reset policy
    for c in range(-(-clips * spec.train_frames // spec.chunk_frames)):
        policy.commit(*random_chunk(spec, g))
        where = f"after commit {c + 1}"
        views = [policy.view(layer) for layer in range(spec.layers)]
        held = 0
        for layer, view in enumerate(views):
            _check_view(view, spec, (c + 1) * spec.chunk_frames, bound, name, f"{where}, layer {layer}")
            ids = view.visible
            held += view.k[:, ids].numel() * view.k.element_size() + view.v[:, ids].numel() * view.v.element_size()
        _require(policy.nbytes() == held, name,
                 f"{where}: nbytes() is {policy.nbytes()}, the K and V the views expose take {held} bytes")
        if hasattr(policy, "slots_in_use"):
            counts = {view.visible.numel() for view in views}
            _require(counts == {policy.slots_in_use()}, name,
                     f"{where}: slots_in_use() is {policy.slots_in_use()}, the views show {sorted(counts)} slots")
        if c < 2:
            first.append([_snapshot(view) for view in views])
    policy.reset(spec)
    _check_empty(policy, spec, name, "after a second reset")
    g = torch.Generator().manual_seed(seed)
    for c, before in enumerate(first):
        policy.commit(*random_chunk(spec, g))
        again = [_snapshot(policy.view(layer)) for layer in range(spec.layers)]
        _require(_same(before, again), name,
                 f"after reset, {c + 1} commits hold something else than the same commits on the fresh policy")


def _check_empty(policy: MemoryPolicy, spec: CacheSpec, name: str, where: str) -> None:
    _require(policy.nbytes() == 0, name, f"{where}: nbytes() is {policy.nbytes()}, not 0")
    if hasattr(policy, "slots_in_use"):
        _require(policy.slots_in_use() == 0, name, f"{where}: slots_in_use() is {policy.slots_in_use()}, not 0")
    for layer in range(spec.layers):
        view = policy.view(layer)
        _require(view.visible.numel() == 0, name, f"{where}: layer {layer}'s view shows {view.visible.numel()} slots")
        _require(view.query_pos == 0, name, f"{where}: query_pos is {view.query_pos}, not 0")


def _check_view(view: KVView, spec: CacheSpec, seen: int, bound: Optional[int], name: str, where: str) -> None:
    B, H, BLK, D = spec.batch, spec.heads, spec.block_tokens, spec.head_dim
    _require(isinstance(view, KVView), name, f"{where}: view() gives {type(view).__name__}, not a KVView")
    ns = view.k.shape[1] if view.k.dim() == 5 else -1
    for field in ("k", "v"):
        t = getattr(view, field)
        _require(tuple(t.shape) == (B, ns, H, BLK, D), name,
                 f"{where}: view.{field} has shape {tuple(t.shape)}, not (B, NS, H, BLK, D) = {(B, 'NS', H, BLK, D)}")
        _require(t.dtype == spec.dtype, name, f"{where}: view.{field} is {t.dtype}, the cache's dtype is {spec.dtype}")
        _require(not t.requires_grad, name, f"{where}: view.{field} requires grad: a gradient reaches the stored "
                                            "K/V (commit should store them detached)")
    for field, floating in (("slot_pos", True), ("slot_frame", False), ("slot_block", False)):
        t = getattr(view, field)
        _require(tuple(t.shape) == (B, ns), name, f"{where}: view.{field} has shape {tuple(t.shape)}, not (B, NS) = {(B, ns)}")
        _require(t.is_floating_point() == floating, name, f"{where}: view.{field} is {t.dtype}")
    _require(not view.slot_pos.requires_grad, name, f"{where}: view.slot_pos requires grad")
    lists = [("always", view.always), ("local", view.local)] + [(f"regions[{r!r}]", t) for r, t in view.regions.items()]
    for field, t in lists:
        _require(t.dim() == 1 and t.dtype == torch.long, name, f"{where}: view.{field} is {t.dtype} of shape "
                                                                f"{tuple(t.shape)}, not 1-D long slot ids")
        _require(bool(((t >= 0) & (t < ns)).all()), name, f"{where}: view.{field} has slot ids outside 0..{ns - 1}")
    ids = view.visible
    _require(ids.unique().numel() == ids.numel(), name, f"{where}: a slot is listed twice in always/local")
    always = set(view.always.tolist())
    for r, t in view.regions.items():
        _require(set(t.tolist()) <= always, name, f"{where}: view.regions[{r!r}] names slots that are not in view.always")
    _require(view.query_pos == seen, name, f"{where}: query_pos is {view.query_pos}, {seen} frames were committed")
    frame, block = view.slot_frame[:, ids], view.slot_block[:, ids]  # (B, NV)
    _require(bool(((frame >= 0) & (frame < seen)).all()), name,
             f"{where}: visible slots hold frames {sorted(set(frame.flatten().tolist()))}, committed are 0..{seen - 1}")
    _require(bool(((block >= 0) & (block < spec.blocks_per_frame)).all()), name,
             f"{where}: visible slots hold blocks outside 0..{spec.blocks_per_frame - 1}")
    for b in range(B):
        pairs = list(zip(frame[b].tolist(), block[b].tolist()))
        _require(len(set(pairs)) == len(pairs), name, f"{where}, batch row {b}: a (frame, block) is held twice")
    pos = view.slot_pos[:, ids].float()
    _require(bool(pos.isfinite().all()), name, f"{where}: a visible slot's read position is not finite")
    if ids.numel():
        _require(bool((pos < view.query_pos).all()), name,
                 f"{where}: a cached block is read at {pos.max().item()}, not before the chunk at {view.query_pos}")
        if bound is not None:
            far = view.query_pos + spec.chunk_frames - 1 - pos.min().item()
            _require(far <= bound, name, f"{where}: a cached block is read {far} frames before the chunk's newest "
                                         f"frame, max_read_distance() promises at most {bound}")


def _snapshot(view: KVView) -> list[Tensor]:
    ids = view.visible  # the slot ids themselves may differ; what they hold, in reading order, may not
    return [view.slot_frame[:, ids], view.slot_block[:, ids], view.slot_pos[:, ids], view.k[:, ids],
            view.v[:, ids], torch.tensor(view.query_pos)]


def _same(a: list, b: list) -> bool:
    return all(len(x) == len(y) and all(torch.equal(s, t) for s, t in zip(x, y)) for x, y in zip(a, b))
