#!/bin/bash
# benchmarks/RESULTS.md "DMD under every memory policy", streaming (dmds2): the DMD recipe of chain10.sh
# with trainer.segments=2, so each training rollout runs 54 frames past the 10 context frames (64-frame
# clips, the cache carried across the 32-frame boundary) and the teacher and critic score all of it, for
# Sparse Forcing with training seed 6 (dmd7's, Fréchet 48.7 with one segment). One OpenMP thread, beside
# another run; waits for chain19.sh; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
SF='memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
while pgrep -f "chain19.sh" > /dev/null; do sleep 20; done
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmds2"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmds2 --set seed=6 \
  --set "stages=[{name: sparse_forcing_streamdmd, $SF}]" \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 2, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=null
date
