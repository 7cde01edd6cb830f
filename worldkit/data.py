"""Episodes from an env plugin, an on-disk cache of them, and the clip datasets training reads.

An episode of ``T`` frames is recorded under the env's smooth random policy: ``frames`` (T, H, W, 3)
uint8, ``actions`` (T, A) float32 and ``states`` (T, S) float32, where ``actions[t]`` is the action
that took frame ``t - 1`` to frame ``t`` (``actions[0]`` is zero): every frame is paired with the
action that produced it.

Splits are seed ranges (train from 0, val from 1_000_000, test from 2_000_000). A split request
(env name, resolved env config, split, episodes, frames, format version) is hashed into the name of
one ``.npz`` in the cache folder, written atomically with a checksum of its contents; the same request
later reads that file and verifies it. A damaged file (truncated by a killed copy or a full disk, or
altered) is recorded anew with a one-line notice.

MuJoCo is never imported here: envs are built through the registry, inside the env plugins.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import signal
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from worldkit import registry
from worldkit.errors import WorldkitError
from worldkit.files import atomic_file
from worldkit.interfaces import Environment

FORMAT_VERSION = 2  # bump when the recorded content or the file layout changes
SPLIT_FIRST_SEED = {"train": 0, "val": 1_000_000, "test": 2_000_000}
SPLIT_SIZE_LIMIT = 1_000_000  # episodes per split, so seed ranges never overlap
CHUNK_EPISODES = 8  # episodes per task handed to a generation worker
PARALLEL_MIN_FRAMES = 4096  # smaller requests are recorded in this process: starting workers costs seconds

PathLike = Union[str, os.PathLike]


@dataclass
class Episode:
    """One recorded episode."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray  # (T, A) float32, actions[t] produced frame t; actions[0] = 0
    states: np.ndarray  # (T, S) float32
    seed: int


@dataclass
class EpisodeSet:
    """Episodes of one split stacked into arrays."""

    frames: np.ndarray  # (N, T, H, W, 3) uint8
    actions: np.ndarray  # (N, T, A) float32
    states: np.ndarray  # (N, T, S) float32
    seeds: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[1])

    def episode(self, i: int) -> Episode:
        return Episode(self.frames[i], self.actions[i], self.states[i], int(self.seeds[i]))


# --------------------------------------------------------------------------------------------------
# Recording


def record_episode(env: Environment, seed: int, frames: int) -> Episode:
    """Reset ``env`` with ``seed`` and record ``frames`` frames under its random policy."""
    env.reset(seed)
    policy_rng = np.random.default_rng([seed, 1])  # a stream apart from the one reset(seed) draws from
    actions = np.zeros((frames, env.action_dim), dtype=np.float32)  # (T, A)
    actions[1:] = env.sample_actions(policy_rng, frames - 1)
    first = env.render()  # (H, W, 3)
    video = np.empty((frames, *first.shape), dtype=np.uint8)  # (T, H, W, 3)
    states = np.empty((frames, env.state_dim), dtype=np.float32)  # (T, S)
    video[0], states[0] = first, env.state()
    for t in range(1, frames):
        env.step(actions[t])
        video[t], states[t] = env.render(), env.state()
    return Episode(video, actions, states, seed)


def _make_env(name: str, config: dict) -> Environment:
    """The env plugin ``name`` built from ``config`` through the registry."""
    return registry.build("env", name, config)


def resolve_config(name: str, config: dict) -> dict:
    """``config`` validated by the env's own Config, every field filled in (JSON types)."""
    return registry.get("env", name).Config.model_validate(config).model_dump(mode="json")


_worker_envs: dict[str, Environment] = {}  # per process: one env per (name, config)


def _record_chunk(task: tuple[str, dict, list[int], int]) -> list[Episode]:
    """Worker task: record the episodes of ``seeds`` with this process's own env."""
    name, config, seeds, frames = task
    key = json.dumps([name, config], sort_keys=True)
    if key not in _worker_envs:
        _worker_envs[key] = _make_env(name, config)
    return [record_episode(_worker_envs[key], seed, frames) for seed in seeds]


def _stack(episodes: list[Episode]) -> EpisodeSet:
    return EpisodeSet(
        frames=np.stack([e.frames for e in episodes]),  # (N, T, H, W, 3)
        actions=np.stack([e.actions for e in episodes]),  # (N, T, A)
        states=np.stack([e.states for e in episodes]),  # (N, T, S)
        seeds=np.array([e.seed for e in episodes], dtype=np.int64),  # (N,)
    )


def _pool_context() -> mp.context.BaseContext:
    """Process start method for generation workers.

    Not ``fork``: a child forked from a process that has rendered (a live EGL/llvmpipe context)
    deadlocks. ``forkserver`` forks clean children from a server that imported this module once, so
    workers start at once without paying the seconds torch and lightning take to import.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    # the server and the workers it forks ignore Ctrl-C from the start (also during its imports)
    ctx.set_forkserver_preload(["worldkit._quiet_interrupt", __name__])
    return ctx


def _ignore_interrupt() -> None:
    """Pool initializer: workers leave Ctrl-C to the main process, which terminates them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def generate(
    name: str, config: dict, seeds: list[int], frames: int, workers: int = 2, desc: str = "", progress: bool = True
) -> EpisodeSet:
    """Record one episode per seed, in ``workers`` processes (in this one for ``workers <= 1`` or a small job)."""
    tasks = [(name, config, seeds[i : i + CHUNK_EPISODES], frames) for i in range(0, len(seeds), CHUNK_EPISODES)]
    workers = min(workers, len(tasks)) if len(seeds) * frames >= PARALLEL_MIN_FRAMES else 1
    episodes: list[Episode] = []
    with tqdm(total=len(seeds), desc=desc or name, unit="ep", disable=not progress) as bar:
        if workers <= 1:
            results: Iterator[list[Episode]] = map(_record_chunk, tasks)
            for chunk in results:
                episodes += chunk
                bar.update(len(chunk))
        else:
            with _pool_context().Pool(workers, initializer=_ignore_interrupt) as pool:
                for chunk in pool.imap(_record_chunk, tasks):
                    episodes += chunk
                    bar.update(len(chunk))
    return _stack(episodes)


# --------------------------------------------------------------------------------------------------
# The cache


def split_seeds(split: str, episodes: int) -> list[int]:
    """The seeds of the first ``episodes`` episodes of ``split``."""
    if split not in SPLIT_FIRST_SEED:
        raise ValueError(f"split: unknown split {split!r}; choices: {list(SPLIT_FIRST_SEED)}")
    if not 0 < episodes <= SPLIT_SIZE_LIMIT:
        raise ValueError(f"episodes: must be in 1..{SPLIT_SIZE_LIMIT}, got {episodes}")
    first = SPLIT_FIRST_SEED[split]
    return list(range(first, first + episodes))


def cache_path(name: str, config: dict, split: str, episodes: int, frames: int, cache_dir: PathLike) -> Path:
    """Where the split request is cached: the file name ends with a hash of everything that shapes it."""
    cls = registry.get("env", name)
    validated = cls.Config.model_validate(config)
    request = {
        "format": FORMAT_VERSION,
        "env": name,
        "config": validated.model_dump(mode="json"),  # every field filled in, as resolve_config gives
        "split": split,
        "first_seed": SPLIT_FIRST_SEED[split],
        "episodes": episodes,
        "frames": frames,
    }
    inputs = cls.cache_inputs(validated)
    if inputs:  # e.g. the model's MJCF and the env's code
        request["inputs"] = inputs
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"{name}-{split}-{episodes}x{frames}-{digest}.npz"


ARRAYS = ("frames", "actions", "states", "seeds")


class DamagedFile(Exception):
    """A cache file that cannot be read whole or does not match its checksum; the message says how."""


def checksum(data: EpisodeSet) -> bytes:
    """SHA-256 of the episodes' arrays (names, dtypes, shapes and contents): the same episodes give the
    same checksum whatever file holds them."""
    h = hashlib.sha256()
    for name in ARRAYS:
        a = np.ascontiguousarray(getattr(data, name))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    return h.digest()


def _write_atomic(path: Path, data: EpisodeSet) -> None:
    """Write ``data`` and its checksum to ``path`` atomically (``files.atomic_file``)."""
    opened = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb") as f:
            opened = True
            np.savez_compressed(f, **{name: getattr(data, name) for name in ARRAYS},
                                sha256=np.frombuffer(checksum(data), dtype=np.uint8))
    except OSError as err:  # the folder: not a folder, not writable
        if opened:  # the writing failed, not the folder
            raise
        raise WorldkitError(f"data.cache_dir: cannot write the episodes into {path.parent} ({err.strerror or err})") from None


def _read(path: Path) -> EpisodeSet:
    """The episodes of a cache file, read whole and checked against the checksum written with them (a
    file from before checksums is only read whole); raises ``DamagedFile``."""
    try:
        with np.load(path) as z:
            data = EpisodeSet(*(z[name] for name in ARRAYS))
            stored = z["sha256"].tobytes() if "sha256" in z.files else None
    except Exception as err:  # truncated zip, bad CRC, a member missing, not an npz at all, ...
        detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise DamagedFile(f"unreadable: {type(err).__name__}{': ' + detail if detail else ''}") from None
    if stored is not None and stored != checksum(data):
        raise DamagedFile("its contents do not match the checksum written with them")
    return data


def _cached(path: Path) -> Optional[EpisodeSet]:
    """The verified episodes of a cache file; None when there is none, or when it is damaged (said in
    one line on stderr; the caller records it anew)."""
    if not path.exists():
        return None
    try:
        return _read(path)
    except DamagedFile as why:
        print(f"warning: {path}: damaged cache file ({why}); recording it anew", file=sys.stderr, flush=True)
        return None


def ensure_split(
    env_spec_name: str,
    env_config: dict,
    split: str,
    episodes: int,
    frames: int,
    cache_dir: PathLike,
    workers: int = 2,
    progress: bool = True,
) -> Path:
    """The cache file of a split request, verified, generating it first when it is not there yet (or damaged)."""
    return _split(env_spec_name, env_config, split, episodes, frames, cache_dir, workers, progress)[0]


def _split(name: str, env_config: dict, split: str, episodes: int, frames: int, cache_dir: PathLike,
           workers: int, progress: bool) -> tuple[Path, EpisodeSet]:
    """The cache file of a split request and its episodes: read and verified, or recorded and written."""
    seeds = split_seeds(split, episodes)
    path = cache_path(name, env_config, split, episodes, frames, cache_dir)
    data = _cached(path)
    if data is None:
        config = resolve_config(name, env_config)
        data = generate(name, config, seeds, frames, workers, f"{name} {split}", progress)
        _write_atomic(path, data)
    return path, data


def load_split(
    env_spec_name: str,
    env_config: dict,
    split: str,
    episodes: int,
    frames: int,
    cache_dir: PathLike,
    workers: int = 2,
    progress: bool = True,
) -> EpisodeSet:
    """``episodes`` episodes of ``frames`` frames from ``split``, read from the cache (generated once)."""
    return _split(env_spec_name, env_config, split, episodes, frames, cache_dir, workers, progress)[1]


def eval_episode_frames(cfg: Any) -> int:
    """Length of a test episode: the context plus the longest evaluation horizon."""
    return cfg.eval.context_frames + max(cfg.eval.horizons) * cfg.train.clip_frames


def split_requests(cfg: Any) -> dict[str, tuple[int, int]]:
    """(episodes, frames) of the train, val and test splits of an experiment config."""
    d = cfg.data
    return {
        "train": (d.train_episodes, d.episode_frames),
        "val": (d.val_episodes, d.episode_frames),
        "test": (d.test_episodes, eval_episode_frames(cfg)),
    }


def _env_request(cfg: Any) -> tuple[str, dict]:
    return cfg.env.type, cfg.env.config.model_dump(mode="json")


def prepare(cfg: Any, progress: bool = True) -> dict[str, Path]:
    """Generate (or find) the train, val and test splits of an experiment; their cache files."""
    name, config = _env_request(cfg)
    return {
        split: ensure_split(name, config, split, n, frames, cfg.data.cache_dir, cfg.data.workers, progress)
        for split, (n, frames) in split_requests(cfg).items()
    }


# --------------------------------------------------------------------------------------------------
# Datasets


class ClipDataset(Dataset):
    """Every clip of ``clip_frames`` frames starting at a multiple of ``stride``; item i is fixed.

    Randomness lives in the sampler (``training.StepSampler``), so an item index always means the same clip.
    Items: ``frames`` (T, 3, H, W) float32 in [-1, 1], ``actions`` (T, A), ``states`` (T, S),
    ``episode`` and ``start``.
    """

    def __init__(self, episodes: EpisodeSet, clip_frames: int, stride: int = 1):
        if not 0 < clip_frames <= episodes.num_frames:
            raise ValueError(f"clip_frames: must be in 1..{episodes.num_frames} (episode length), got {clip_frames}")
        self.episodes = episodes
        self.clip_frames = clip_frames
        self.stride = stride
        self.starts_per_episode = (episodes.num_frames - clip_frames) // stride + 1

    def __len__(self) -> int:
        return len(self.episodes) * self.starts_per_episode

    def locate(self, index: int) -> tuple[int, int]:
        """(episode, start frame) of item ``index``."""
        episode, k = divmod(index, self.starts_per_episode)
        return episode, k * self.stride

    def __getitem__(self, index: int) -> dict[str, Any]:
        e, s = self.locate(index)
        clip = slice(s, s + self.clip_frames)
        frames = torch.from_numpy(self.episodes.frames[e, clip])  # (T, H, W, 3) uint8
        return {
            "frames": frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0,  # (T, 3, H, W) in [-1, 1]
            "actions": torch.from_numpy(self.episodes.actions[e, clip]),  # (T, A)
            "states": torch.from_numpy(self.episodes.states[e, clip]),  # (T, S)
            "episode": e,
            "start": s,
        }
