#!/bin/bash
# The DMD run of benchmarks/RESULTS.md "DMD, longer, on the main job's Sparse Forcing", started once the
# policies run (rtp1) had finished; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
while pgrep -f "worldkit run experiments/rollout_training_policies" > /dev/null; do sleep 20; done
SF='memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmd2"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmd2 \
  --set "stages=[{name: sparse_forcing_dmd, $SF}]" \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set "compare=[{name: sparse_forcing_zero_shot, $SF, train: {max_steps: 0}}]" \
  --set eval.reference=sparse_forcing_zero_shot
date
