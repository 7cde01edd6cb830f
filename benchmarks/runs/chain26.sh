#!/bin/bash
# benchmarks/RESULTS.md "DMD with a stronger teacher": chain23.sh's first run with guidance 1.5 in place of 3
# (dmdg3: Sparse Forcing, seed 1, the base itself as the teacher). Beside chain22.sh, one OpenMP thread;
# echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
SF='memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
DMD='trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2, guidance: 1.5}}'
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmdg3"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmdg3 --set seed=1 \
  --set "stages=[{name: sparse_forcing_guideddmd, $SF}]" --set "$DMD" \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=sparse_forcing_guideddmd
date
