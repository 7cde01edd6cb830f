#!/bin/bash
# chain24.sh with guidance 3 into dmdt2 (beside chain24.sh's dmdt1).
G=3.0 OUT=/work/runs/dmdt2 exec /work/main/benchmarks/runs/chain24.sh
