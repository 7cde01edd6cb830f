"""Attention analysis: does a trained world model show Sparse Forcing's two observations?

A rollout with the dense policy records, at every commit pass, the block-level attention of each query
block (mean over its tokens, per layer and head) over all cached blocks and the chunk's own blocks.
From these maps:

- **local concentration**: within the local window (the last ``window_frames`` frames, the chunk
  included), the share of the window's attention mass that the top 25 % of its blocks capture
  (uniform attention gives 25 %);
- **persistence**: of the top history blocks (older than the window) by attention mass at one chunk,
  the share that is again among the top at the next chunk (a random choice of the same size gives
  ``top / candidates``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from worldkit.files import atomic_write
from worldkit.frames import frames_to_tensor
from worldkit.model import WorldModel
from worldkit.rollout import Rollout


class AttentionRecorder:
    """A commit-pass hook keeping block-level attention maps (call ``flush`` after the rollout).

    ``maps[c][layer]`` is (H, NQB, NV + NQB): query block x [cached blocks in view order ; own blocks],
    batch-averaged, with ``frames[c]`` (NV + NQB,) the frame index of every key block."""

    def __init__(self, chunk_frames: int):
        self.chunk_frames = chunk_frames
        self.maps: list[dict[int, torch.Tensor]] = []
        self.frames: list[torch.Tensor] = []
        self._current: dict[int, torch.Tensor] = {}

    def __call__(self, layer, q, k, view, index) -> None:
        B, H, Tq, D = q.shape
        blk = view.k.shape[3]
        if layer == 0:
            self.flush()
        vis = view.visible
        cached = view.k[:, vis].permute(0, 2, 1, 3, 4).reshape(B, H, -1, D)  # (B, H, NV * BLK, D)
        keys = torch.cat([cached, k], 2)  # (B, H, Tk, D)
        p = torch.softmax((q.float() @ keys.float().transpose(-1, -2)) / math.sqrt(D), -1)  # (B, H, Tq, Tk)
        p = p.view(B, H, Tq // blk, blk, -1, blk).sum(-1).mean(3).mean(0)  # (H, NQB, NKB)
        self._current[layer] = p.cpu()
        if layer == 0:  # key blocks' frames: the cached ones, then the chunk's own (frame-major)
            nqb = Tq // blk
            own = int(view.query_pos) + torch.arange(nqb) // (nqb // self.chunk_frames)
            self.frames.append(torch.cat([view.slot_frame[0, vis].cpu(), own]))

    def flush(self) -> None:
        if self._current:
            self.maps.append(self._current)
            self._current = {}


def local_concentration(maps, frames, window_frames: int, top: float = 0.25) -> float:
    """Mean share of the window's attention mass captured by its top ``top`` fraction of blocks."""
    shares = []
    for m_by_layer, fr in zip(maps, frames):
        newest = int(fr.max())
        in_window = fr > newest - window_frames  # (NKB,)
        n = int(in_window.sum())
        k = max(1, round(top * n))
        for m in m_by_layer.values():  # (H, NQB, NKB)
            w = m[..., in_window]
            tot = w.sum(-1).clamp_min(1e-12)
            shares.append((w.topk(k, dim=-1).values.sum(-1) / tot).mean().item())
    return float(np.mean(shares)) if shares else float("nan")


def persistence(maps, frames, window_frames: int, top: int = 4) -> tuple[float, float]:
    """(mean overlap of consecutive chunks' top history blocks, what chance would give)."""
    overlaps, chance = [], []
    for (m0, f0), (m1, f1) in zip(zip(maps, frames), zip(maps[1:], frames[1:])):
        hist0 = f0 <= int(f1.max()) - window_frames  # history at the *next* chunk, present in both
        hist1 = f1 <= int(f1.max()) - window_frames
        n = int(hist0.sum())
        if n <= top:
            continue
        for layer in m0:
            a = m0[layer][..., : hist0.numel()][..., hist0].sum(1)  # (H, n) mass per history block
            b = m1[layer][..., : hist1.numel()][..., hist1][..., :n].sum(1)
            ta, tb = a.topk(top, -1).indices, b.topk(top, -1).indices
            same = (ta[..., :, None] == tb[..., None, :]).any(-1).float().mean().item()
            overlaps.append(same)
            chance.append(top / n)
    if not overlaps:
        return float("nan"), float("nan")
    return float(np.mean(overlaps)), float(np.mean(chance))


def save_heatmaps(maps, frames, path: Path, layer: int = -1, head: int = 0) -> list[Path]:
    """Two PNGs: the last chunk's block attention map, and history-block mass over chunks (stripes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = sorted(maps[-1])[layer]
    out = []
    m = maps[-1][layer][head].numpy()  # (NQB, NKB)
    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.imshow(np.log10(m + 1e-6), aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_xlabel("key block (oldest -> newest, own chunk last)")
    ax.set_ylabel("query block")
    ax.set_title(f"block attention, last chunk, layer {layer} head {head} (log10)")
    fig.tight_layout()
    p1 = path.with_name(path.stem + "_map.png")
    fig.savefig(p1, dpi=110)
    plt.close(fig)
    out.append(p1)
    # stripes: mass that each block (by episode frame x block) receives, chunk after chunk
    nb_max = max(int(f.max()) for f in frames) + 1
    per_frame = np.full((len(maps), nb_max), np.nan)
    for c, (mm, fr) in enumerate(zip(maps, frames)):
        mass = mm[layer][head].sum(0).numpy()  # (NKB,)
        for j in range(nb_max):
            sel = (fr == j).numpy()
            if sel.any():
                per_frame[c, j] = mass[sel].sum()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.imshow(np.log10(per_frame.T + 1e-6), aspect="auto", cmap="viridis", origin="lower", interpolation="nearest")
    ax.set_xlabel("chunk")
    ax.set_ylabel("key frame")
    ax.set_title("attention mass per key frame over chunks (log10)")
    fig.tight_layout()
    p2 = path.with_name(path.stem + "_stripes.png")
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    out.append(p2)
    return out


@torch.no_grad()
def analyze_attention(model: WorldModel, frames: np.ndarray, actions: np.ndarray, context_frames: int,
                      gen_frames: int, window_frames: int, out_dir: Path, train_frames: int,
                      steps: int = 4, shift: float = 1.0, logger=None) -> dict:
    """Roll ``model`` out with the dense policy over the given episodes and report both observations."""
    from worldkit import registry

    rec = AttentionRecorder(model.chunk_frames)
    r = Rollout(model, registry.build("memory", "dense"), registry.build("selector", "all"),
                registry.build("attention", "sdpa"), steps=steps, shift=shift, train_frames=train_frames)
    dev = next(model.parameters()).device
    gt = frames_to_tensor(frames).to(dev)
    act = torch.from_numpy(actions).float().to(dev)
    r.commit_hook = rec
    r.run(gt[:, :context_frames], act[:, : context_frames + gen_frames], gen_frames,
          generator=torch.Generator().manual_seed(0))
    rec.flush()
    conc = local_concentration(rec.maps, rec.frames, window_frames)
    pers, chance = persistence(rec.maps, rec.frames, window_frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = save_heatmaps(rec.maps, rec.frames, out_dir / "attention")
    result = {
        "local_top25_mass": conc,
        "local_top25_uniform": 0.25,
        "history_top_persistence": pers,
        "history_top_persistence_chance": chance,
        "window_frames": window_frames,
        "chunks": len(rec.maps),
        "heatmaps": [p.name for p in pngs],
    }
    atomic_write(out_dir / "attention.json", json.dumps(result, indent=1))
    if logger is not None:
        from PIL import Image

        for p in pngs:
            img = np.asarray(Image.open(p).convert("RGB"))
            logger.add_image(f"attention/{p.stem}", img, 0, dataformats="HWC")
        logger.add_scalar("attention/local_top25_mass", conc, 0)
        logger.add_scalar("attention/history_top_persistence", pers, 0)
        logger.flush()
    return result


def analyze_run(run_dir: os.PathLike, episodes: int = 4, window_frames: int = 6, horizon: Optional[int] = None,
                stage: Optional[str] = None) -> dict:
    """``worldkit analyze attention RUN_DIR``: a finished stage's model on test episodes; by default the
    last stage of the run's chain (not a comparison variant), or ``stage`` by name or folder name.
    horizon: rollout length in training clips (default 4, or the run's longest evaluation horizon if
    shorter). Results go to ``analysis/<stage folder>/``, one folder per analysed stage."""
    from torch.utils.tensorboard import SummaryWriter

    from worldkit import config as wk_config
    from worldkit import data as wk_data
    from worldkit.errors import WorldkitError
    from worldkit.stages import resolve_stages

    run_dir = Path(run_dir)
    for flag, value in (("--episodes", episodes), ("--window", window_frames), ("--horizon", horizon)):
        if value is not None and value < 1:
            raise WorldkitError(f"{flag} must be at least 1; got {value}")
    cfg = wk_config.load(run_dir / "config.yaml")
    if horizon is None:
        horizon = min(4, max(cfg.eval.horizons))
    finished = [st for st in resolve_stages(cfg) if (run_dir / "stages" / st.dirname / "model.pt").exists()]
    if not finished:
        raise WorldkitError(f"{run_dir}: no finished stage (stages/*/model.pt) to analyze")
    if stage is not None:
        chosen = [st for st in finished if stage in (st.name, st.dirname)]
        if not chosen:
            raise WorldkitError(f"--stage {stage}: not a finished stage of {run_dir}; choices: "
                                + ", ".join(st.dirname for st in finished))
    else:
        chosen = [st for st in finished if not st.variant] or finished
    path = run_dir / "stages" / chosen[-1].dirname / "model.pt"
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = WorldModel(**blob["hparams"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    clip = cfg.train.clip_frames
    gen = horizon * clip
    need = cfg.eval.context_frames + gen
    name, env_cfg = cfg.env.type, cfg.env.config.model_dump(mode="json")
    test = wk_data.load_split(name, env_cfg, "test", cfg.data.test_episodes, wk_data.eval_episode_frames(cfg),
                              cfg.data.cache_dir, cfg.data.workers)
    if episodes > len(test.frames):
        raise WorldkitError(f"--episodes {episodes}: the run has {len(test.frames)} test episodes")
    if test.frames.shape[1] < need:
        raise WorldkitError(f"--horizon {horizon}: test episodes have {test.frames.shape[1]} frames, {need} needed "
                            f"(the run evaluates up to {max(cfg.eval.horizons)} clips)")
    writer = SummaryWriter(str(run_dir / "tb" / "analysis" / chosen[-1].dirname))
    out = run_dir / "analysis" / chosen[-1].dirname
    res = analyze_attention(
        model, test.frames[:episodes, :need], test.actions[:episodes, :need], cfg.eval.context_frames, gen,
        window_frames, out, clip, cfg.model.sampler_steps, cfg.model.shift, writer,
    )
    writer.close()
    res["model"] = str(path.relative_to(run_dir))
    res["out"] = str(out)
    return res
