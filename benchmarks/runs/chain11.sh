#!/bin/bash
# benchmarks/RESULTS.md "Rollout training under every memory policy", DMD on dense with another seed
# (dmd5): dmd3's dense stage trained with seed 1 (dmd3 trained it as stage 3, seed 3); waits for
# chain10.sh's run; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
while pgrep -f "out /work/runs/dmd4" > /dev/null; do sleep 20; done
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmd5"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmd5 --set seed=1 \
  --set 'stages=[{name: dense_dmd, memory: {type: dense}}]' \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=null
date
