#!/usr/bin/env bash
# One GPU session, in order: the PBSA kernel check + benchmark, then the two base checkpoints
# (pendulum and memory room, pretrained in parallel on the one GPU). Written for the lent H100/H200
# machine (Python 3.12 with torch, triton, lightning; no index): pydantic arrives as wheels in .whl/
# (../shared/gpu-wheels.sh .whl) and the episodes as a prepared cache in .gpucache/
# (worldkit data experiments/pretrain_*.yaml --set data.cache_dir=$PWD/.gpucache), so no MuJoCo is needed.
# Results land in $OUT (default ./gpu_out).
set -u
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
  || { echo "editable install failed"; cat "$OUT/install.log"; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
  python3 -c "import torch, triton, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'lightning', lightning.__version__)"; } \
  | tee "$OUT/gpu_info.txt"

# 1. kernels: correctness against the reference, then timings (side by side, one process)
timeout 270 python3 benchmarks/kernel_bench.py --quick --write 2>&1 | tee "$OUT/kernel_bench.log"
cp benchmarks/RESULTS.md "$OUT/RESULTS.md" 2>/dev/null

# 2. base checkpoints, both at once (small models leave the GPU mostly idle; each process gets a few
#    CPU threads: two processes with a thread per core each made every CPU op crawl)
for env in pendulum memory; do
  OMP_NUM_THREADS=4 python3 -m worldkit run "experiments/pretrain_$env.yaml" --out "/tmp/runs/$env" \
    --set train.accelerator=gpu --set "data.cache_dir=$PWD/.gpucache" --set train.max_minutes=${MINUTES:-4} \
    >"$OUT/pretrain_$env.log" 2>&1 &
done
wait
for env in pendulum memory; do
  tail -c 3000 "$OUT/pretrain_$env.log"
  tar czf "$OUT/pretrain_$env.tgz" -C /tmp/runs "$env" --exclude=checkpoints 2>/dev/null
done
ls -la "$OUT"
