#!/bin/bash
# benchmarks/RESULTS.md "DMD under every memory policy", the teacher and critic scoring the whole clip
# noised (trainer.dmd.history: noisy, as Self-Forcing scores whole videos) instead of each chunk given the
# clean generated frames before it; otherwise the DMD recipe of chain10.sh and chain13.sh, with their
# training seeds: the 9-frame window with seed 3 (dmd4's, Fréchet 38.3 with clean history) and seed 7 (dmd7's).
# One run per stage (stage 0 trains with the run's seed). One OpenMP thread, beside another run; waits for
# chain15.sh; echoes the date and commit before each command.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
SF='memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
W9='memory: {type: sliding_window, window_frames: 9}'
while pgrep -f "chain15.sh" > /dev/null; do sleep 20; done
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmdn2"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmdn2 --set seed=3 \
  --set "stages=[{name: window_9_noisydmd, $W9}]" \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2, history: noisy}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=null
date
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmdn4"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/dmdn4 --set seed=7 \
  --set "stages=[{name: window_9_noisydmd, $W9}]" \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2, history: noisy}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference=null
date
