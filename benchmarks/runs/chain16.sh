#!/bin/bash
# benchmarks/RESULTS.md "DMD under every memory policy", third seeds (dmd9): the sink and the persistent
# memory read densely trained by the DMD recipe with seed 10 (stage i trains with seed 10 + i: sink 10,
# persistent_block 11). One OpenMP thread, beside another run; waits for chain14.sh's run; echoes the date
# and commit before the command.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
while pgrep -f "out /work/runs/dmd8" > /dev/null; do sleep 20; done
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmd9"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmd9 --set seed=10 \
  --set 'stages=[{name: sink_9_dmd, memory: {type: sink, sink_frames: 1, window_frames: 8}}, {name: persistent_block_dmd, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}}]' \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=null
date
