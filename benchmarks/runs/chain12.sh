#!/bin/bash
# benchmarks/RESULTS.md "Rollout training under every memory policy", DMD third seeds (dmd6): dense and the
# 4-frame window trained by the DMD recipe with seed 4 (stage i trains with seed 4 + i: dense 4, window 5);
# waits for the full test suite; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
while pgrep -f "pytest -q -p no:cacheprovider" > /dev/null; do sleep 10; done
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmd6"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmd6 --set seed=4 \
  --set 'stages=[{name: dense_dmd, memory: {type: dense}}, {name: window_4_dmd, memory: {type: sliding_window, window_frames: 4}}]' \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=null
date
