#!/bin/bash
source /work/venv/bin/activate
cd /work/main
echo "gran start $(date) commit $(git rev-parse --short HEAD)"
rm -rf /work/runs/gran2 /work/runs/gran1 /work/runs/sinkpos /work/runs/sfr3
time worldkit run experiments/block_granularity.yaml --out /work/runs/gran2
time worldkit run experiments/block_granularity.yaml --set model.block_patches=1 --out /work/runs/gran1
echo "sink eval start $(date) commit $(git rev-parse --short HEAD)"
time worldkit eval base/revisit_room experiments/sparse_forcing.yaml --out /work/runs/sinkpos \
  --set 'compare=[{name: sink_9, memory: {type: sink, sink_frames: 1, window_frames: 8}}, {name: sink_9_absolute, memory: {type: sink, sink_frames: 1, window_frames: 8, sink_position: absolute}}]' \
  --set eval.reference=sink_9
echo "dmd start $(date) commit $(git rev-parse --short HEAD)"
time worldkit run experiments/self_forcing_revisit.yaml --out /work/runs/sfr3 \
  --set 'stages=[{name: sparse_forcing_dmd}]' \
  --set 'trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: base/revisit_room, critic_ratio: 5, critic_lr_scale: 0.2}}' \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=150 --set train.lr=5.0e-5 --set train.max_minutes=16 \
  --set 'compare=[]' --set eval.reference=null
echo "chain3 done $(date)"
