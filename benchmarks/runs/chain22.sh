#!/bin/bash
# benchmarks/RESULTS.md "DMD with a stronger teacher": the teacher (teacher1), base/revisit_room trained
# 2000 more steps by its own recipe with action dropout 0.1. Runs beside chain23.sh, each with one OpenMP
# thread on the 2-core machine; echoes the date and commit before the command.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: /work/runs/teacher1"
time worldkit run experiments/pretrain_revisit_guided.yaml --out /work/runs/teacher1
date
