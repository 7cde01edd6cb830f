#!/usr/bin/env bash
# Trains the revisit room's base checkpoints on a GPU, both at once (small models leave the card mostly
# idle): experiments/pretrain_revisit.yaml (the CPU quality default, 16 tokens per frame) and
# experiments/pretrain_revisit_large.yaml (64 tokens, 16 blocks per frame). Each stage stops at its
# max_steps or after MINUTES minutes, then evaluates itself (state probe, held-out rollouts).
# The episodes arrive as a prepared cache in .gpucache/ (made where MuJoCo renders:
#   worldkit data experiments/pretrain_revisit.yaml --set data.cache_dir=$PWD/.gpucache
# ), so the GPU machine needs no MuJoCo; pydantic arrives as wheels in .whl/ (benchmarks/gpu_session.sh
# installs them). What comes back in $OUT: each model.pt in half precision (bases-<name>.pt), the run
# folders without Lightning checkpoints and the zero-shot evaluations (bases-runs.tgz) and the logs.
#   MINUTES=3.5 bash benchmarks/gpu_train_bases.sh
# PARALLEL=0 trains them one after the other (at once, on 2026-12-04, they ran at 9.2 and 4.9 steps/s).
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
CACHE=${CACHE:-$PWD/.gpucache}
ACC=${ACCELERATOR:-gpu}
EXTRA=("$@")  # extra --set overrides for both runs (the CPU dry run makes them tiny)
EVAL_EXTRA=(${EVAL_SETS:-})  # extra --set overrides for the evaluations
for name in pretrain_revisit pretrain_revisit_large; do
  OMP_NUM_THREADS=${THREADS:-4} timeout ${RUN_S:-420} python3 -m worldkit run "experiments/$name.yaml" --out "/tmp/bases/$name" \
    --set train.accelerator=$ACC --set "data.cache_dir=$CACHE" --set data.workers=0 \
    --set train.max_minutes=${MINUTES:-3.5} "${EXTRA[@]}" >"$OUT/bases-$name.log" 2>&1 &
  [ "${PARALLEL:-1}" = 0 ] && wait  # PARALLEL=0: one run at a time, each with the whole card and host
done
wait
for name in pretrain_revisit pretrain_revisit_large; do
  echo "== $name"; grep -v "it/s\]" "$OUT/bases-$name.log" | tail -c 2500
  python3 - "$name" "$OUT" <<'PY' || echo "no weights for $1"
import sys, torch
from pathlib import Path
name, out = sys.argv[1], Path(sys.argv[2])
src = Path("/tmp/bases") / name / "stages" / "0-train" / "model.pt"
blob = torch.load(src, map_location="cpu", weights_only=False)
blob["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
torch.save(blob, out / f"bases-{name}.pt")
print(name, "->", out / f"bases-{name}.pt", round((out / f"bases-{name}.pt").stat().st_size / 2**20, 2), "MiB")
PY
done
# each base read zero-shot under every memory policy of experiments/sparse_forcing.yaml, both at once
for name in pretrain_revisit pretrain_revisit_large; do
  weights=/tmp/bases/$name/stages/0-train/model.pt
  [ -f "$weights" ] || continue
  OMP_NUM_THREADS=${THREADS:-4} timeout ${EVAL_S:-150} python3 -m worldkit eval "$weights" experiments/sparse_forcing.yaml \
    --out "/tmp/bases/eval-$name" --set "data.cache_dir=$CACHE" --set data.workers=0 \
    --set data.train_episodes=2048 --set data.val_episodes=16 "${EVAL_EXTRA[@]}" \
    >"$OUT/bases-eval-$name.log" 2>&1 &
done
wait
for name in pretrain_revisit pretrain_revisit_large; do
  [ -f "/tmp/bases/eval-$name/results.md" ] && { echo "== eval of $name"; cat "/tmp/bases/eval-$name/results.md"; } \
    || { echo "== eval of $name failed"; tail -c 1500 "$OUT/bases-eval-$name.log"; }
done
tar czf "$OUT/bases-runs.tgz" --exclude=checkpoints --exclude=model.pt -C /tmp/bases . || echo "tar of the runs failed"
ls -la "$OUT"
