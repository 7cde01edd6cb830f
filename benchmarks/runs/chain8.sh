#!/bin/bash
# benchmarks/RESULTS.md "Rollout training under every memory policy", DMD on the 4-frame window (dmdw4):
# the recipe of the DMD run on Sparse Forcing (dmd2), the generator being the 4-frame window, beside its
# zero-shot reading as the paired reference; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
W4='memory: {type: sliding_window, window_frames: 4}'
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmdw4"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmdw4 \
  --set "stages=[{name: window_4_dmd, $W4}]" \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set "compare=[{name: window_4_zero_shot, $W4, train: {max_steps: 0}}]" \
  --set eval.reference=window_4_zero_shot
date
