#!/bin/bash
# benchmarks/RESULTS.md "Rollout training under every memory policy", the second-seed run (rtp4): lr 2e-5
# as in rtp3, seed 1 (each stage trains with seed + its index), Sparse Forcing and the 4-frame window
# trained, Sparse Forcing's zero-shot reading beside them as the paired reference; echoes the date and
# commit before the command.
source /work/venv/bin/activate
cd /work/main
SF='memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/rtp4"
time worldkit run experiments/rollout_training_policies.yaml --out /work/runs/rtp4 --set seed=1 --set train.lr=2.0e-5 \
  --set "compare=[{name: window_4_teacher, memory: {type: sliding_window, window_frames: 4}}, {name: sparse_forcing_zero_shot, $SF, train: {max_steps: 0}}]" \
  --set eval.reference=sparse_forcing_zero_shot
date
