#!/bin/bash
# benchmarks/RESULTS.md "Guided DMD", the other queue beside chain27.sh: the 9-frame window with seeds 3
# and 1 (the seeds of dmd4's and dmd3's), then Sparse Forcing seed 1 against the stronger teacher
# (teacher1, chain22.sh) at the same guidance as dmdg3. Waits for the teacher's run to finish.
R=/work/main/benchmarks/runs
SF='name: sparse_forcing_teacherdmd, memory: {type: persistent_block, sink_frames: 1, persistent_frames: 2, window_frames: 6}, selector: {type: local_window, top_k: 0.25, keep_chunk: true}, attention: {type: pbsa}'
while pgrep -f "out /work/runs/teacher1" > /dev/null; do sleep 20; done
$R/guided_dmd.sh /work/runs/dmdg5 3 "{name: window_9_guideddmd, memory: {type: sliding_window, window_frames: 9}}" base/revisit_room 1.5
$R/guided_dmd.sh /work/runs/dmdg7 1 "{name: window_9_guideddmd, memory: {type: sliding_window, window_frames: 9}}" base/revisit_room 1.5
$R/guided_dmd.sh /work/runs/dmdt1 1 "{$SF}" /work/runs/teacher1/stages/0-train/model.pt 1.5
