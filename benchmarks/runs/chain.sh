#!/bin/bash
source /work/venv/bin/activate
cd /work/main
while ! grep -q "^real" /work/runs/sfr2.log; do sleep 10; done
echo "matrix start $(date) commit $(git rev-parse --short HEAD)"
time python benchmarks/train_deploy.py experiments/sparse_forcing.yaml \
  --set 'compare=[{name: persistent_block, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}}, {name: persistent_block_ordered, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6, position: ordered}}, {name: window_9, memory: {type: sliding_window, window_frames: 9}}, {name: sink_9, memory: {type: sink, sink_frames: 1, window_frames: 8}}, {name: dense, memory: {type: dense}}]' \
  --evaluated base=/work/runs/main_v2 \
  --weights sf_teacher=/work/runs/sfr2/stages/0-sparse_forcing_teacher/model.pt w9_teacher=/work/runs/sfr2/stages/1-window_9_teacher/model.pt sf_own=/work/runs/sfr1/stages/0-sparse_forcing_denoise/model.pt \
  --out /work/runs/matrix1
echo "gran start $(date) commit $(git rev-parse --short HEAD)"
time worldkit run experiments/block_granularity.yaml --out /work/runs/gran2
time worldkit run experiments/block_granularity.yaml --set model.block_patches=1 --out /work/runs/gran1
echo "chain done $(date)"
