#!/bin/bash
# benchmarks/RESULTS.md "DMD under every memory policy", 600 more steps (240 generator updates in all):
# dmd4's Sparse Forcing (seed 1, Fréchet 42.8 at 600 steps) and 9-frame window (seed 3, 38.3), the two worst seeds.
# Copies /work/runs/dmd4 to /work/runs/dmd4c and reopens those stages with train.max_steps=1200
# (benchmarks/runs/continue_stages.py), then resumes: training goes on from their step-600 checkpoints
# (weights, EMA, optimizer, critic), the same seed, and the stages are evaluated again. One OpenMP thread,
# beside another run; waits for chain13.sh's run; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
while pgrep -f "out /work/runs/dmd7" > /dev/null; do sleep 20; done
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmd4c"
python benchmarks/runs/continue_stages.py /work/runs/dmd4 /work/runs/dmd4c 1200 sparse_forcing_dmd window_9_dmd
time worldkit run --resume /work/runs/dmd4c
date
