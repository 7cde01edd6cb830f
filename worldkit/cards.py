"""Shipping a base checkpoint: copy a finished run's weights into ``worldkit/base/`` with a model card.

    python -m worldkit.cards RUN_DIR NAME --command "..." --hardware "..."

The card states the exact command, the hardware, the wall time and steps of training, and the run's
held-out evaluation (mean ± standard error over test episodes) beside the persistence and mean-frame
baselines, so that anyone can check it with the command it gives.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from worldkit import checkpoints

WHO = {"model": "model", "persistence": "persistence (copy last frame)", "mean_frame": "mean training frame"}
METRICS = {"psnr": "PSNR dB", "fg_psnr": "foreground PSNR dB", "ssim": "SSIM", "skill": "skill vs persistence",
           "state_err": "state-probe error (std)", "fd": "Fréchet distance (probe features)",
           "sharpness": "sharpness / truth's", "motion": "motion / truth's",
           "physics": "physics residual / truth's"}


def training_facts(stage_dir: Path) -> dict:
    """Steps and wall time of a finished stage, from its last checkpoint and TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ckpt = torch.load(stage_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    tb = stage_dir.parent.parent / "tb" / stage_dir.name
    acc = EventAccumulator(str(tb)).Reload()
    walls = [e.wall_time for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag) if tag.startswith("train/")]
    return {"steps": int(ckpt["global_step"]), "train_minutes": (max(walls) - min(walls)) / 60 if walls else float("nan")}


def eval_table(ev: dict) -> str:
    """Markdown: one row per (metric, forecaster), one column per horizon, mean ± standard error."""
    hs = ev["horizons"]
    lines = ["| metric | forecast | " + " | ".join(f"{h}x ({h * ev['clip_frames']} frames)" for h in hs) + " |",
             "|---|---|" + "---|" * len(hs)]
    per_horizon = {**ev["buckets"], **ev.get("quality", {})}
    for metric, label in METRICS.items():
        for who, wlabel in WHO.items():
            rows = per_horizon.get(metric, {}).get(who)
            if rows:
                lines.append(f"| {label} | {wlabel} | " + " | ".join(f"{m:.3f} ± {se:.3f}" for m, se in rows) + " |")
        floor = ev["buckets"].get(metric, {}).get("truth") or (ev.get("quality", {}).get("fd", {}).get("truth")
                                                              if metric == "fd" else None)
        if floor:
            lines.append(f"| {label} | ground truth (floor) | " + " | ".join(f"{m:.3f} ± {se:.3f}" for m, se in floor) + " |")
    return "\n".join(lines)


def recall_section(ev: dict) -> str:
    """The recall-by-gap table of an env with recall targets (empty otherwise)."""
    if not ev.get("recall"):
        return ""
    from worldkit import recall_report

    return "\n## Recall by gap (dense cache)\n\n" + recall_report.markdown([("model", "dense", ev["recall"])])


def write_card(run_dir: Path, name: str, command: str, hardware: str, stage: str = "0-train") -> Path:
    """Copy ``run_dir/stages/<stage>/model.pt`` to ``base/<name>.pt`` and write ``base/<name>.md``."""
    stage_dir = Path(run_dir) / "stages" / stage
    ev = json.loads((stage_dir / "eval.json").read_text())
    facts = training_facts(stage_dir)
    cfg_text = (Path(run_dir) / "config.yaml").read_text()
    from worldkit import config as wk_config
    from worldkit.stages import resolve_stages

    cfg = wk_config.load(Path(run_dir) / "config.yaml")
    st = next(x for x in resolve_stages(cfg) if x.dirname == stage)
    method = (f"{st.trainer['type'].replace('_', ' ')} with the `{st.memory['type']}` KV-cache policy, "
              f"{cfg.model.prediction}-prediction" + (f", starting from `{cfg.model.init}`" if cfg.model.init else ""))
    checkpoints.BASE_DIR.mkdir(exist_ok=True)
    dst = checkpoints.BASE_DIR / f"{name}.pt"
    shutil.copyfile(stage_dir / "model.pt", dst)
    blob = torch.load(dst, map_location="cpu", weights_only=False)
    params = sum(v.numel() for v in blob["state_dict"].values())
    card = f"""# Base checkpoint `base/{name}`

A world model of the `{cfg.env.type}` environment, trained with worldkit's own code: {method}.
Experiments start from it with `model.init: base/{name}`.

- weights: `worldkit/base/{name}.pt` ({dst.stat().st_size / 2**20:.1f} MiB, {params / 1e6:.2f} M parameters)
- model: {", ".join(f"{k}={v}" for k, v in blob["hparams"].items())}
- command: `{command}`
- hardware: {hardware}
- training: {facts["steps"]} optimizer steps in {facts["train_minutes"]:.0f} minutes of wall time

## Held-out evaluation

{ev["episodes"]} test episodes (seeds 2,000,000 and up, never seen in training), context
{ev.get("context_frames", "2")} ground-truth frames, then the model's own rollout with the true actions to {max(ev["horizons"])}x the
{ev["clip_frames"]}-frame training clip; each horizon bucket covers the frames after the previous one.
Mean ± standard error over episodes. Skill = 1 - MSE(model) / MSE(persistence): above 0 beats copying the
last frame. The state-probe error reads back from the frames what one frame shows of the simulator state
(the environment's `observable` state; a CNN trained on ground-truth frames; in training-set standard
deviations); its floor is its error on the true frames.
Reproduce the table with the command above (it evaluates at the end of training), or score these weights
as they are, without training, under any experiment's plugins: `worldkit eval base/{name} X.yaml`.

{eval_table(ev)}
{recall_section(ev)}
## Resolved configuration

```yaml
{cfg_text.strip()}
```
"""
    path = checkpoints.BASE_DIR / f"{name}.md"
    path.write_text(card)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="ship a finished run's weights as a base checkpoint with a model card")
    p.add_argument("run_dir")
    p.add_argument("name")
    p.add_argument("--command", required=True, help="the exact command that trained it")
    p.add_argument("--hardware", required=True)
    p.add_argument("--stage", default="0-train")
    a = p.parse_args(argv)
    print(write_card(Path(a.run_dir), a.name, a.command, a.hardware, a.stage))


if __name__ == "__main__":
    main()
