#!/bin/bash
# One DMD run of the recipe of experiments/rollout_training_dmd.yaml with the teacher's score guided along
# the actions: guided_dmd.sh OUT SEED STAGE TEACHER GUIDANCE, STAGE a stage's YAML flow mapping. One
# OpenMP thread (two runs side by side on the 2-core machine); echoes the date and commit first.
source /work/venv/bin/activate
cd /work/main
export OMP_NUM_THREADS=1
OUT=$1 SEED=$2 STAGE=$3 TEACHER=$4 G=$5
NAME=$(sed -E 's/.*name: ([a-z0-9_]+).*/\1/' <<< "$STAGE")
echo "$(date) commit $(git rev-parse --short HEAD)"
echo "run folder: $OUT (seed $SEED, teacher $TEACHER, guidance $G)"
time worldkit run experiments/rollout_training_policies.yaml --out "$OUT" --set seed="$SEED" \
  --set "stages=[$STAGE]" \
  --set "trainer={type: self_forcing, context_frames: 10, segments: 1, commit: own, dmd: {teacher: $TEACHER, critic_ratio: 5, critic_lr_scale: 0.2, guidance: $G}}" \
  --set 'train.betas=[0.0, 0.999]' --set train.max_steps=600 --set train.lr=5.0e-5 \
  --set 'compare=[]' --set eval.reference="$NAME"
date
