"""The game of ``worldkit play``: a model rolling out chunk by chunk under the player's actions from the
first frames of a recorded test episode, and on request the true simulator stepped beside it; the memory
policies offered by name; loading the weights and episodes it plays."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from worldkit import data as wk_data
from worldkit import registry
from worldkit.errors import PluginError, WorldkitError


# The memory policies offered by name (any other installed memory plugin is offered with its defaults).
MEMORY_PRESETS = {
    "dense": {"type": "dense"},
    "sliding_window": {"type": "sliding_window", "window_frames": 9},
    "sink": {"type": "sink"},
    "persistent_block": {"type": "persistent_block", "sink_frames": 1, "persistent_frames": 2, "window_frames": 6},
}


def memory_choices() -> list[str]:
    """The presets, then every other installed memory plugin."""
    return list(MEMORY_PRESETS) + [n for n in registry.names("memory") if n not in MEMORY_PRESETS]


def memory_spec(name: str, field: str = "--memory") -> dict:
    """The plugin spec of a memory policy offered by name; a user error naming ``field`` otherwise."""
    choices = memory_choices()
    if name not in choices:
        raise WorldkitError(f"{field}: unknown memory policy {name!r}; choices: {', '.join(choices)}")
    return dict(MEMORY_PRESETS.get(name, {"type": name}))


def check_env(name: Optional[str]) -> None:
    """A user error naming ``--env`` when no env plugin is called ``name``."""
    if name is None:
        return
    try:
        registry.get("env", name)
    except PluginError as err:
        raise WorldkitError(f"--env: {err}") from None


@dataclass
class Chunk:
    """One generated chunk: frames (Fc, H, W, 3) uint8, the simulator's beside them (or None)."""

    first: int  # index of its first frame in the episode
    frames: np.ndarray
    simulator: Optional[np.ndarray]
    action: list[float]
    ms: float  # model time of the chunk (denoising and commit)
    kv_bytes: int  # KV-cache bytes held after the chunk's commit
    simulator_ms: float
    memory: str  # the memory policy it was generated under


class Game:
    """A world model played from the first ``context`` frames of recorded test episodes (``episodes``,
    ``worldkit.api.Episodes``; ``seeds`` their simulator seeds). Not thread-safe: call it from one thread."""

    def __init__(self, world, episodes, seeds: list[int], memory: str = "sliding_window", context: int = 10,
                 seed: int = 0, episode: int = 0):
        self.world, self.episodes, self.seeds = world, episodes, list(seeds)
        self.model = world.model
        self.chunk_frames = self.model.chunk_frames
        self.action_dim = int(self.model.hparams["action_dim"])
        self.context, self.seed = context, seed
        self.memory = memory
        memory_spec(memory)
        self.device = next(self.model.parameters()).device
        self.env = None
        self.simulator = False
        self.restart(episode)

    # ---- state ----------------------------------------------------------------------------------
    def restart(self, episode: Optional[int] = None) -> None:
        """Back to the context of ``episode`` (default: the current one): the cache, the noise, the simulator."""
        episode = self.episode if episode is None else episode
        if not 0 <= episode < len(self.episodes):
            raise WorldkitError(f"episode: {episode} is not one of the {len(self.episodes)} recorded episodes "
                                f"(0-{len(self.episodes) - 1})")
        self.episode = episode
        ctx = slice(episode, episode + 1), slice(0, self.context)
        self.recent = self.episodes.frames[ctx].to(self.device), self.episodes.actions[ctx].to(self.device)
        self.frame = self.context  # index of the next frame
        self.history: list[np.ndarray] = []  # the actions taken after the context, one per frame
        self.generator = torch.Generator().manual_seed(self.seed)
        self._recommit()
        if self.simulator:
            self._sync_simulator()

    def set_memory(self, name: str) -> None:
        """Switch the memory policy: a fresh cache holding the last ``context`` frames."""
        previous, self.memory = self.memory, name
        try:
            self._recommit()
        except Exception:  # an unknown or broken policy: the game plays on under the one it had
            self.memory = previous
            raise

    def set_simulator(self, on: bool) -> None:
        """Step the true environment beside the model (brought to where the model is: the episode's context,
        then every action taken since)."""
        self.simulator = bool(on)
        if self.simulator:
            self._sync_simulator()

    def _recommit(self) -> None:
        from worldkit.rollout import Rollout

        w = self.world
        self.rollout = Rollout(self.model, registry.build("memory", memory_spec(self.memory, "memory")),
                               registry.build("selector", "all"), registry.build("attention", "sdpa"),
                               steps=w.sampler_steps, shift=w.shift, train_frames=w.train_frames)
        with torch.no_grad():
            self.rollout.reset(1, device=self.device)
            self.rollout.commit_frames(*self.recent)

    def _sync_simulator(self) -> None:
        if self.env is None:
            self.env = registry.build("env", self.world.env, self.episodes.env_config)
        self.env.reset(self.seeds[self.episode])
        taken = self.episodes.actions[self.episode, 1 : self.context].numpy()  # actions[0] led to frame 0
        for a in [*taken, *self.history]:
            self.env.step(a)

    def simulator_frame(self) -> np.ndarray:
        """The simulator's current frame (H, W, 3) uint8 (simulator on)."""
        return self.env.render()

    # ---- play -----------------------------------------------------------------------------------
    def step(self, action) -> Chunk:
        """Generate the next chunk under ``action`` (A,) held for each of its frames (clipped to [-1, 1])."""
        from worldkit.frames import tensor_to_frames

        a = np.clip(np.asarray(action, dtype=np.float32).reshape(-1), -1.0, 1.0)
        if a.shape != (self.action_dim,):
            raise WorldkitError(f"action: {len(a)} values; the model takes {self.action_dim}")
        fc = self.chunk_frames
        acts = torch.from_numpy(np.repeat(a[None, None], fc, axis=1)).to(self.device)  # (1, Fc, A)
        with torch.no_grad():
            x = self.rollout.chunk(acts, generator=self.generator)  # (1, Fc, 3, H, W)
        timing = self.rollout.timings[-1]
        sim, sim_ms = None, 0.0
        if self.simulator:
            t0 = time.perf_counter()
            sim = np.stack([self._sim_step(a) for _ in range(fc)])
            sim_ms = (time.perf_counter() - t0) * 1e3
        self.history.extend([a] * fc)
        frames, actions = self.recent
        self.recent = (torch.cat([frames, x], 1)[:, -self.context:], torch.cat([actions, acts], 1)[:, -self.context:])
        first, self.frame = self.frame, self.frame + fc
        return Chunk(first, tensor_to_frames(x[0]), sim, [float(v) for v in a], timing.total_ms, timing.kv_bytes,
                     sim_ms, self.memory)

    def _sim_step(self, a: np.ndarray) -> np.ndarray:
        self.env.step(a)
        return self.env.render()

    def close(self) -> None:
        if self.env is not None and hasattr(self.env, "close"):
            self.env.close()
        self.env = None


def load_world(weights: str, env: Optional[str], memory: str, context: int, episodes: int,
               cache_dir: Optional[str] = None):
    """The world model, its test episodes (the first ``context`` frames of ``episodes`` of them, recorded
    into the data cache) and their seeds, checked against each other; user errors name the option."""
    import worldkit.api as wk

    memory_spec(memory)
    check_env(env)
    if episodes < 1:
        raise WorldkitError(f"--episodes: {episodes}; must be at least 1")
    world = wk.World.load(weights, env=env)
    fc = world.model.chunk_frames
    if context < fc or context % fc:
        raise WorldkitError(f"--context: {context} frames; must be a positive multiple of the model's "
                            f"{fc}-frame chunk")
    try:
        eps = world.episodes(episodes, frames=context, cache_dir=cache_dir)
    except (ValueError, TypeError) as err:
        raise WorldkitError(f"--env: {world.env} with {world.env_config}: {err}") from None
    hw, a = tuple(eps.frames.shape[-2:]), eps.actions.shape[-1]
    if hw != tuple(world.model.geometry.frame_hw) or a != world.model.hparams["action_dim"]:
        raise WorldkitError(f"--env: {world.env} gives {hw[0]}x{hw[1]} frames and {a} action dimensions; the "
                            f"weights take {world.model.geometry.frame_hw[0]}x{world.model.geometry.frame_hw[1]} "
                            f"and {world.model.hparams['action_dim']}")
    return world, eps, wk_data.split_seeds("test", episodes)
