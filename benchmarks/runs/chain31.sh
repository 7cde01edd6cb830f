#!/bin/bash
# benchmarks/RESULTS.md "Guided DMD", after chain30.sh on its side: guidance 1.25 (dmdg14: Sparse Forcing,
# seed 1, the base as the teacher), beside guidance 1.5 (dmdg3), 3 (dmdg1) and none (dmd4): whether a
# weaker guidance keeps the Fréchet gain with less exaggerated motion.
R=/work/main/benchmarks/runs
SF='name: sparse_forcing_guideddmd, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
while pgrep -f chain30.sh > /dev/null; do sleep 20; done
$R/guided_dmd.sh /work/runs/dmdg14 1 "{$SF}" base/revisit_room 1.25
