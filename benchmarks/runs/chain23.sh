#!/bin/bash
# benchmarks/RESULTS.md "DMD with a stronger teacher": the base itself as the teacher, its score guided
# along the actions (guidance 3, against zeroed actions = no turn): Sparse Forcing with seed 1 (dmdg1,
# beside dmd4's), then the 9-frame window with seed 3 (dmdg2, beside dmd4's). Runs beside chain22.sh,
# each with one OpenMP thread; echoes the date and commit before each command. dmdg1 collapsed (RESULTS),
# so dmdg2 was stopped by hand at step 123 of 600 and left out; chain26.sh ran guidance 1.5 instead.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
SF='memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
DMD='trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2, guidance: 3.0}}'
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmdg1"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmdg1 --set seed=1 \
  --set "stages=[{name: sparse_forcing_guideddmd, $SF}]" --set "$DMD" \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=sparse_forcing_guideddmd
date
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmdg2"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmdg2 --set seed=3 \
  --set "stages=[{name: window_9_guideddmd, memory: {type: sliding_window, window_frames: 9}}]" --set "$DMD" \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=window_9_guideddmd
date
