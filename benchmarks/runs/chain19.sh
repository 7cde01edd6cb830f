#!/bin/bash
# benchmarks/RESULTS.md "DMD under every memory policy", 600 more steps (240 generator updates in all):
# dmd3's 9-frame window (seed 1, Fréchet 15.5 at 600 steps), the good seed beside chain15.sh's bad one.
# Copies /work/runs/dmd3 to /work/runs/dmd3c and reopens those stages with train.max_steps=1200
# (benchmarks/runs/continue_stages.py), then resumes: training goes on from their step-600 checkpoints
# (weights, EMA, optimizer, critic), the same seed, and the stages are evaluated again. One OpenMP thread,
# beside another run; waits for chain17.sh; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
while pgrep -f "chain17.sh" > /dev/null; do sleep 20; done
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/dmd3c"
python benchmarks/runs/continue_stages.py /work/runs/dmd3 /work/runs/dmd3c 1200 window_9_dmd
time worldkit run --resume /work/runs/dmd3c
date
