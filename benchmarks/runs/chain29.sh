#!/bin/bash
# benchmarks/RESULTS.md "Guided DMD", the policies not yet guided, after chain27.sh on its side: the
# persistent memory read densely (seed 0), the 4-frame window (seed 0), the sink (seed 8): the seeds of
# their unguided runs dmd3, dmdw4, dmd8.
R=/work/main/benchmarks/runs
while pgrep -f chain27.sh > /dev/null; do sleep 20; done
$R/guided_dmd.sh /work/runs/dmdg9 0 "{name: persistent_block_guideddmd, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}}" base/revisit_room 1.5
$R/guided_dmd.sh /work/runs/dmdg11 0 "{name: window_4_guideddmd, memory: {type: sliding_window, window_frames: 4}}" base/revisit_room 1.5
$R/guided_dmd.sh /work/runs/dmdg13 8 "{name: sink_9_guideddmd, memory: {type: sink, sink_frames: 1, window_frames: 8}}" base/revisit_room 1.5
