"""A state probe: a small CNN that reads the simulator state from frames.

Trained once per dataset on ground-truth frames (cached beside the episodes), it is applied to
predicted frames so that errors are measured on what moves (angles, positions) rather than on the
static background. Its input is two consecutive frames (t-1, t), so velocities are readable too. The
error of a forecast is the RMS, over state dimensions standardised by the training set, of
probe(forecast) - true state.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from worldkit.files import atomic_path
from worldkit.frames import frames_to_tensor


class StateProbe(nn.Module):
    """(B, 2, 3, H, W) frame pairs in [-1, 1] -> (B, S) standardised state."""

    def __init__(self, state_dim: int, frame_size: int, width: int = 32):
        super().__init__()
        layers, c, size = [], 6, frame_size
        for out in (width, 2 * width, 2 * width):
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.GELU()]
            c, size = out, (size + 1) // 2
        self.conv = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, 128), nn.GELU(), nn.Linear(128, state_dim))
        self.register_buffer("mean", torch.zeros(state_dim))
        self.register_buffer("std", torch.ones(state_dim))

    def forward(self, pairs: Tensor) -> Tensor:
        return self.head(self.conv(pairs.flatten(1, 2)))

    def features(self, pairs: Tensor) -> Tensor:
        """The penultimate layer: what the probe reads the state from, (B, 2, 3, H, W) -> (B, 128)."""
        return self.head[:-1](self.conv(pairs.flatten(1, 2)))

    def standardise(self, states: Tensor) -> Tensor:
        return (states - self.mean) / self.std


def frame_pairs(frames: Tensor, first_prev: Optional[Tensor] = None) -> Tensor:
    """(B, T, 3, H, W) -> (B, T, 2, 3, H, W): each frame with the one before it (``first_prev`` (B, 3, H, W)
    before the first; by default the first frame itself)."""
    prev = frames[:, :1] if first_prev is None else first_prev[:, None]
    before = torch.cat([prev, frames[:, :-1]], 1)
    return torch.stack([before, frames], 2)


def train_probe(frames: np.ndarray, states: np.ndarray, steps: int = 1500, batch: int = 128, seed: int = 0,
                device: str = "cpu") -> StateProbe:
    """Fit a probe on episodes: frames (N, T, H, W, 3) uint8, states (N, T, S)."""
    g = torch.Generator().manual_seed(seed)
    N, T = frames.shape[:2]
    st = torch.from_numpy(states).float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = StateProbe(states.shape[-1], frames.shape[2]).to(device)
    probe.mean.copy_(st.flatten(0, 1).mean(0))
    probe.std.copy_(st.flatten(0, 1).std(0).clamp_min(1e-3))
    opt = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for _ in range(steps):
        e = torch.randint(N, (batch,), generator=g)
        t = torch.randint(1, T, (batch,), generator=g)
        pair = np.stack([frames[e, t - 1], frames[e, t]], 1)  # (batch, 2, H, W, 3)
        x = frames_to_tensor(pair).to(device)
        y = probe.standardise(st[e, t].to(device))
        loss = (probe(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return probe.eval()


def probe_path(dataset_file: Path, steps: int, seed: int, states: Optional[np.ndarray] = None) -> Path:
    """Where the probe of a dataset is cached: keyed by the dataset, the training steps and seed, and the
    states it reads (their shape and first values, so another ``observable`` mapping trains a new probe)."""
    tag = "" if states is None else f"|{states.shape}|{hashlib.sha256(np.ascontiguousarray(states[:2]).tobytes()).hexdigest()}"
    key = hashlib.sha256(f"{dataset_file.name}|{steps}|{seed}|v1{tag}".encode()).hexdigest()[:12]
    return dataset_file.with_name(f"probe-{dataset_file.stem}-{key}.pt")


def cached_probe(dataset_file: Path, frames: np.ndarray, states: np.ndarray, steps: int = 1500, seed: int = 0) -> StateProbe:
    """The probe of a cached dataset, trained on first use and stored beside it (atomically). A stored
    probe that cannot be read (a damaged file) is said in one line and trained again."""
    path = probe_path(Path(dataset_file), steps, seed, states)
    if path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            probe = StateProbe(blob["state_dim"], blob["frame_size"])
            probe.load_state_dict(blob["state_dict"])
            return probe.eval().to("cuda" if torch.cuda.is_available() else "cpu")
        except Exception as err:  # truncated, not a torch file, other keys
            print(f"warning: {path}: damaged probe file ({type(err).__name__}); training it anew", file=sys.stderr,
                  flush=True)
    probe = train_probe(frames, states, steps=steps, seed=seed, device="cuda" if torch.cuda.is_available() else "cpu")
    with atomic_path(path) as tmp:
        torch.save({"state_dim": states.shape[-1], "frame_size": frames.shape[2], "state_dict": probe.state_dict()}, tmp)
    return probe


@torch.no_grad()
def state_error(probe: StateProbe, frames: Tensor, states: Tensor, first_prev: Tensor) -> Tensor:
    """Per-frame RMS error of the probe's reading of ``frames`` (B, T, 3, H, W) against the true
    ``states`` (B, T, S), in training-set standard deviations: (B, T)."""
    dev = next(probe.parameters()).device
    pairs = frame_pairs(frames.float(), first_prev.float()).to(dev)
    B, T = pairs.shape[:2]
    pred = torch.cat([probe(p) for p in pairs.flatten(0, 1).split(512)]).view(B, T, -1)
    return (pred - probe.standardise(states.float().to(dev))).pow(2).mean(-1).sqrt().cpu()
