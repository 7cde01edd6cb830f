#!/bin/bash
# benchmarks/RESULTS.md "Guided DMD", beside chain29.sh, after chain28.sh on its side: dense (seed 1) and
# the 9-frame window's third seed (7): the seeds of their unguided runs dmd5 and dmd7.
R=/work/main/benchmarks/runs
while pgrep -f chain28.sh > /dev/null; do sleep 20; done
$R/guided_dmd.sh /work/runs/dmdg10 1 "{name: dense_guideddmd, memory: {type: dense}}" base/revisit_room 1.5
$R/guided_dmd.sh /work/runs/dmdg12 7 "{name: window_9_guideddmd, memory: {type: sliding_window, window_frames: 9}}" base/revisit_room 1.5
