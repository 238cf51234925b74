#!/usr/bin/env bash
# Paper Fig. 5 on real data, offline, on one CPU core (Debian's dataset-fashion-mnist): test
# accuracy against the equivalent label smoothing gamma in the paper's four scenarios,
#   1. teachers (784-256-256-10 MLPs) trained with label smoothing alpha   (gamma = alpha)
#   2. students (784-64-10 MLPs) trained with label smoothing alpha, alone (gamma = alpha)
#   3. students distilled (beta = 1) from the hard-target teacher at the temperature T where its
#      gamma over the training split equals alpha (--match-gamma, bisected to 1e-3)
#   4. students distilled (beta = 1) from the label-smoothed teachers at T = 1
#      (gamma = that teacher's gamma at T = 1 over the training split)
# then `ls-vision plot-fig5` draws $OUT/fig5.png (and fig5.json) from the runs' metrics.json.
# Short schedules (a few epochs) keep it under 30 minutes; the teachers train without
# augmentation so that they fit the training split (a teacher wrong on a fraction e of it cannot
# reach gamma below e K/(K-1)).  Resumable: finished runs are skipped.
# Usage: bash examples/vision/fig5_fashion.sh [OUT_DIR]
#        (ALPHAS, TEACHER_EPOCHS, STUDENT_EPOCHS, FASHION_MNIST_DIR override the defaults)
set -euo pipefail
source "$(dirname "$0")/common.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}  # small MLPs: 1 thread
DATA_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
OUT=${1:-runs/vision/fig5-fashion}
ALPHAS=${ALPHAS:-"0 0.1 0.2 0.3"}
COMMON=(--dataset fashion-mnist --model mlp --optimizer adam --lr 0.001 --lr-scheduler step
        --batch-size 128 --no-augment --quiet)
TEACHER=("${COMMON[@]}" --mlp-depth 2 --mlp-width 256 --epochs "${TEACHER_EPOCHS:-10}")
STUDENT=("${COMMON[@]}" --mlp-depth 1 --mlp-width 64 --epochs "${STUDENT_EPOCHS:-8}")

for alpha in $ALPHAS; do
  run "$OUT/teacher-ls$alpha" "${TEACHER[@]}" --label-smoothing "$alpha"
  run "$OUT/student-ls$alpha" "${STUDENT[@]}" --label-smoothing "$alpha"
done
for alpha in $ALPHAS; do
  [[ $alpha == 0 ]] && continue
  run "$OUT/student-hard-teacher-gamma$alpha" "${STUDENT[@]}" \
    --teacher "$OUT/teacher-ls0/checkpoint.pt" --match-gamma "$alpha" --distill-weight 1
  run "$OUT/student-ls-teacher$alpha" "${STUDENT[@]}" \
    --teacher "$OUT/teacher-ls$alpha/checkpoint.pt" --distill-temperature 1 --distill-weight 1
done
ls-vision plot-fig5 "$OUT"/teacher-ls* "$OUT"/student-* --out "$OUT/fig5.png"
