"""Evaluate a checkpoint as it is (no training) with the plugins of every stage and variant of an experiment.

    python benchmarks/eval_checkpoint.py experiments/sparse_forcing.yaml base/pendulum [--set eval.horizons=[1,4]]

Prints, per stage / variant, the model's foreground PSNR and state-probe error (mean ± standard error) per
horizon bucket, on the experiment's held-out episodes: what fine-tuning has to beat.
"""
from __future__ import annotations

import argparse
import sys

import torch

from worldkit import config as wk_config
from worldkit.errors import WorldkitError
from worldkit.experiment import RunData, evaluate_model, load_weights, resolve_init, resolve_stages
from worldkit.model import WorldModel


def evaluate_checkpoint(cfg, checkpoint: str) -> list[tuple[str, dict]]:
    """(stage dirname, {metric: [(mean, se) per horizon]}) for fg_psnr, psnr and (with a probe) state_err,
    and ``episodes``: how many held-out episodes were scored."""
    d = RunData(cfg)
    path = resolve_init(checkpoint)
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model = WorldModel(**blob["hparams"])
    load_weights(model, path)
    rows = []
    for stage in resolve_stages(cfg):
        res = evaluate_model(cfg, model, stage.memory, stage.selector, stage.attention, d, None, desc=stage.dirname,
                             train_frames=stage.train.clip_frames)
        rows.append((stage.dirname, {"episodes": res.episodes,
                                     **{m: res.bucket(m) for m in ("fg_psnr", "state_err", "psnr") if m in res.buckets}}))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment")
    ap.add_argument("checkpoint", help="a checkpoint path or a shipped name such as base/pendulum")
    ap.add_argument("--set", action="append", default=[], metavar="K=V")
    args = ap.parse_args(argv)
    try:
        cfg = wk_config.load(args.experiment, args.set)
        if cfg.grid:
            raise WorldkitError(f"{args.experiment}: a grid experiment; give one cell's config.yaml (in its cell folder)")
        rows = evaluate_checkpoint(cfg, args.checkpoint)
    except WorldkitError as err:  # bad input: one line per problem, no traceback
        for line in err.lines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    hs = cfg.eval.horizons
    metrics = [m for m in ("fg_psnr", "state_err") if m in rows[0][1]]  # no state error without a probe
    names = {"fg_psnr": "fg-PSNR", "state_err": "state err"}
    print(f"{args.checkpoint} with no training, {rows[0][1]['episodes']} held-out episodes (mean ± standard error)")
    print("| stage | " + " | ".join(f"{names[m]} {h}x" for m in metrics for h in hs) + " |")
    print("|---|" + "---|" * (len(metrics) * len(hs)))
    for name, m in rows:
        cells = [f"{a:.2f} ± {b:.2f}" for metric in metrics for a, b in m[metric]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
