#!/bin/bash
# benchmarks/RESULTS.md "Guided DMD", after chain29.sh on its side: the persistent memory read densely,
# seed 9 (its second guided seed; the seed of dmd8's unguided run).
R=/work/main/benchmarks/runs
while pgrep -f chain29.sh > /dev/null; do sleep 20; done
$R/guided_dmd.sh /work/runs/dmdg15 9 "{name: persistent_block_guideddmd, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}}" base/revisit_room 1.5
