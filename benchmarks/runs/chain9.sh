#!/bin/bash
# benchmarks/RESULTS.md "Rollout training under every memory policy", DMD on the four other policies
# (dmd3): the recipe of dmd2 / dmdw4, the generators being the persistent memory read densely, the 9-frame
# window, the sink and dense (stage i trains with seed i); their zero-shot rows are rtp1's (the
# evaluation is seeded); echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmd3"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmd3 \
  --set 'stages=[{name: persistent_block_dmd, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}}, {name: window_9_dmd, memory: {type: sliding_window, window_frames: 9}}, {name: sink_9_dmd, memory: {type: sink, sink_frames: 1, window_frames: 8}}, {name: dense_dmd, memory: {type: dense}}]' \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=window_9_dmd
date
