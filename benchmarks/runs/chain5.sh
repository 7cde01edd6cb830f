#!/bin/bash
# benchmarks/RESULTS.md "Rollout training under every memory policy", the context-noise run (rtp2):
# started once the DMD run (chain4.sh) had finished; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
while pgrep -f "chain4.sh" > /dev/null; do sleep 20; done
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/rtp2"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/rtp2 \
  --set trainer.context_noise=0.3 \
  --set 'compare=[{name: window_9_teacher, memory: {type: sliding_window, window_frames: 9}}, {name: window_4_teacher, memory: {type: sliding_window, window_frames: 4}}]'
date
