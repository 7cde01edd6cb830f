#!/bin/bash
# benchmarks/RESULTS.md "Guided DMD": guidance 1.5 with the base as the teacher, more seeds and policies
# (one queue; chain28.sh runs the other beside it): Sparse Forcing seeds 6 and 0, the sink seed 2 (the
# seeds of their unguided runs dmd7, dmd2, dmd3).
R=/work/main/benchmarks/runs
SF='name: sparse_forcing_guideddmd, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
$R/guided_dmd.sh /work/runs/dmdg4 6 "{$SF}" base/revisit_room 1.5
$R/guided_dmd.sh /work/runs/dmdg6 0 "{$SF}" base/revisit_room 1.5
$R/guided_dmd.sh /work/runs/dmdg8 2 "{name: sink_9_guideddmd, memory: {type: sink, sink_frames: 1, window_frames: 8}}" base/revisit_room 1.5
