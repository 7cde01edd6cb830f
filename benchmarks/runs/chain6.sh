#!/bin/bash
# benchmarks/RESULTS.md "Rollout training under every memory policy", the learning-rate run (rtp3): every
# policy trained at lr 2e-5 (the zero-shot rows are rtp1's: the evaluation is seeded, the same weights
# give the same rows); started once the context-noise run (chain5.sh) had finished; echoes the date and
# commit before the command.
source /work/venv/bin/activate
cd /work/main
while pgrep -f "chain5.sh" > /dev/null; do sleep 20; done
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/rtp3"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/rtp3 --set train.lr=2.0e-5 \
  --set 'compare=[{name: persistent_block_teacher, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}}, {name: window_9_teacher, memory: {type: sliding_window, window_frames: 9}}, {name: sink_9_teacher, memory: {type: sink, sink_frames: 1, window_frames: 8}}, {name: window_4_teacher, memory: {type: sliding_window, window_frames: 4}}, {name: dense_teacher, memory: {type: dense}}]'
date
