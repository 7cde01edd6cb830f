#!/usr/bin/env bash
# One GPU session, in order (PHASE: a comma list of kernels, decode, bases; default all three):
#   kernels  kernel_bench.py --headline: the PBSA kernel headline of issue 23, each problem gated first
#            (about 2 min on an H200; bounded by KERNEL_S, default 150 s)
#   decode   decode_bench.py --preset wan: end-to-end decode at Wan2.1-1.3B shapes, dense / sliding window /
#            sink / Sparse Forcing at 1x, 4x and 12x the 21-frame clip (about 2.5 min; DECODE_S, default 170 s)
#   bases    the revisit room's base checkpoints, trained at two sizes at once (MINUTES each, default 3),
#            each then scored zero-shot under every memory policy of experiments/sparse_forcing.yaml
#            (benchmarks/gpu_train_bases.sh; about 5 minutes: run it as a call of its own)
# Written for the lent H100/H200 machine (Python 3.12 with torch, triton, lightning; no index): pydantic
# arrives as wheels in .whl/ (downloaded where an index is reachable: python3 -m pip download --no-deps
# --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl pydantic pydantic-core
# annotated-types typing-inspection) and the episodes as a prepared cache in
# .gpucache/ (worldkit data experiments/pretrain_revisit.yaml --set data.cache_dir=$PWD/.gpucache), so no
# MuJoCo is needed. Results land in $OUT (default ./gpu_out), few files: kernels.log, decode.log and
# RESULTS_gpu.md (the phases' markdown sections, ready to paste, each naming card, driver, versions and
# commit), and bases-* (weights in half precision, logs, the runs and evaluations as one archive). A copy of the tree without git history names its commit through
# WORLDKIT_COMMIT (e.g. WORLDKIT_COMMIT=$(git rev-parse HEAD) where the copy is made).
# KERNEL_ARGS / DECODE_ARGS replace the phases' arguments (e.g. KERNEL_ARGS="--headline --backward").
# DRY=1 runs the kernels and decode phases on the CPU at toy sizes through the same code (Triton under its
# interpreter; about a minute): a typo costs no GPU time. tests/test_gpu_session.py runs it.
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PHASE=${PHASE:-all}
[ "$PHASE" = all ] && PHASE=kernels,decode,bases
has() { [[ ",$PHASE," == *",$1,"* ]]; }
PY=${PYTHON:-python3}
MD="$OUT/RESULTS_gpu.md"

if [ -n "${DRY:-}" ]; then
  export TRITON_INTERPRET=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  KERNEL_ARGS=${KERNEL_ARGS:---tiny --headline --profile}
  DECODE_ARGS=${DECODE_ARGS:---preset tiny --device cpu --dtype float32 --horizons 1 4 12 --reps 1 --impl triton --profile}
  PHASE=${PHASE//bases/}  # no training on the CPU
  echo "# Dry run of the GPU session on the CPU, $(date -u +%F)" > "$MD"
else
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >/tmp/install.log 2>&1 \
    || { echo "editable install failed"; cat /tmp/install.log; }
  KERNEL_ARGS=${KERNEL_ARGS:---headline --profile}
  DECODE_ARGS=${DECODE_ARGS:---preset wan --device cuda --dtype bfloat16 --horizons 1 4 12 --reps 3 --sdpa cudnn --profile}
  { echo "# GPU session, $(date -u +%F)"; echo; echo '```'
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'triton', triton.__version__)"
    echo '```'; } | tee "$MD"
fi

# run NAME SECONDS SCRIPT ARGS...: one phase under a timeout (SIGTERM, then SIGKILL 15 s later); its output
# in $OUT/NAME.log, its markdown (written as it goes, so a stopped phase leaves what it measured) appended
# to RESULTS_gpu.md with the exit status.
run() {
  local name=$1 limit=$2 script=$3
  shift 3
  local md=/tmp/worldkit_$name.md
  rm -f "$md"
  echo "== $name: $PY $script $* (limit $limit s)"
  local start=$SECONDS
  timeout -k 15 "$limit" $PY "$script" "$@" --out "$md" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  { echo; [ -f "$md" ] && cat "$md" || echo "($name wrote no table; see $name.log)"
    echo; echo "($name: exit status $rc$([ "$rc" = 124 ] && echo ', stopped by its time limit'), $((SECONDS - start)) s.)"; } >> "$MD"
  echo "== $name: exit status $rc in $((SECONDS - start)) s"
}

# 1. the kernel headline: the gate (by FlashAttention's rule) on every problem, then the timings
has kernels && run kernels "${KERNEL_S:-150}" benchmarks/kernel_bench.py $KERNEL_ARGS
# 2. end-to-end decode at Wan2.1-1.3B shapes (DECODE_SKIP: cells to leave out, e.g. "dense@12")
has decode && run decode "${DECODE_S:-170}" benchmarks/decode_bench.py $DECODE_ARGS --skip ${DECODE_SKIP:-}

# 3. the revisit room's base checkpoints trained on the GPU (benchmarks/gpu_train_bases.sh: both sizes at
#    once, MINUTES each), then each scored zero-shot under experiments/sparse_forcing.yaml's memory policies
has bases && OUT="$OUT" bash benchmarks/gpu_train_bases.sh
ls -la "$OUT"
