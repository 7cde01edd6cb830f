#!/bin/bash
# benchmarks/RESULTS.md "DMD under every memory policy", third seeds (dmd7): Sparse Forcing and the
# 9-frame window trained by the DMD recipe with seed 6 (stage i trains with seed 6 + i: Sparse Forcing 6,
# window 9 7), the window 9 as the paired reference. Runs beside chain14.sh, each with one OpenMP thread
# on the 2-core machine; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
SF='memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmd7"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmd7 --set seed=6 \
  --set "stages=[{name: sparse_forcing_dmd, $SF}, {name: window_9_dmd, memory: {type: sliding_window, window_frames: 9}}]" \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=window_9_dmd
date
