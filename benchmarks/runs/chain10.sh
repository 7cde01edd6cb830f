#!/bin/bash
# benchmarks/RESULTS.md "Rollout training under every memory policy", DMD again with another seed
# (dmd4): Sparse Forcing, the 4-frame window and the 9-frame window trained by the DMD recipe with seed 1
# (stage i trains with seed 1 + i), the window 9 as the paired reference; waits for chain9.sh's run;
# echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
while pgrep -f "out /work/runs/dmd3" > /dev/null; do sleep 20; done
SF='memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmd4"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmd4 --set seed=1 \
  --set "stages=[{name: sparse_forcing_dmd, $SF}, {name: window_4_dmd, memory: {type: sliding_window, window_frames: 4}}, {name: window_9_dmd, memory: {type: sliding_window, window_frames: 9}}]" \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=window_9_dmd
date
