#!/bin/bash
# benchmarks/RESULTS.md "DMD with a stronger teacher": DMD of base/revisit_room against the stronger
# teacher (teacher1: chain22.sh), Sparse Forcing with seed 1 (beside dmd4's and dmdg1's): guidance 1
# (dmdt1) and guidance 3 (dmdt2, run by chain25.sh beside this one). Each with one OpenMP thread; waits
# for the teacher and for the guided runs of chain23.sh and chain26.sh; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
G=${G:-1.0}
OUT=${OUT:-/work/runs/dmdt1}
while [ ! -f /work/runs/teacher1/stages/0-train/summary.json ]; do sleep 20; done
while pgrep -f "out /work/runs/dmdg[23]" > /dev/null; do sleep 20; done
SF='memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
DMD="trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: /work/runs/teacher1/stages/0-train/model.pt, critic_ratio: 5, critic_lr_scale: 0.2, guidance: $G}}"
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: $OUT (guidance $G)"
time worldkit run experiments/rollout_training_policies.yaml --out $OUT --set seed=1 \
  --set "stages=[{name: sparse_forcing_teacherdmd, $SF}]" --set "$DMD" \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=sparse_forcing_teacherdmd
date
