#!/usr/bin/env bash
# Paper Fig. 5: distillation from a ResNet-56 teacher to an AlexNet student on CIFAR-10,
# student accuracy against the equivalent smoothing gamma, in four scenarios:
#   1. teachers trained with label smoothing alpha          (gamma = alpha)
#   2. students trained with label smoothing alpha, alone   (gamma = alpha)
#   3. students distilled (beta = 1) from the hard-target teacher at temperature T
#      (gamma = the teacher's E[sum_k (1 - y_k) p^t_k(T) K / (K - 1)] over the training set)
#   4. students distilled (beta = 1, T = 1) from the label-smoothed teachers of scenario 1
# Writes $OUT/fig5.tsv and $OUT/fig5.png (ls-vision plot-fig5).  Many runs: a GPU (or several,
# via LAUNCH=torchrun ...) is needed.
# Usage: bash examples/vision/fig5.sh [OUT_DIR]
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${1:-runs/vision/fig5}
ALPHAS=${ALPHAS:-"0 0.1 0.2 0.3 0.4 0.5 0.6"}
TEMPERATURES=${TEMPERATURES:-"1 2 3 4 6 8"}

for alpha in $ALPHAS; do
  run "$OUT/teacher-ls$alpha" --dataset cifar10 --model resnet56 "${RESNET_RECIPE[@]}" \
    --label-smoothing "$alpha"
  run "$OUT/student-ls$alpha" --dataset cifar10 --model alexnet "${ALEXNET_RECIPE[@]}" \
    --label-smoothing "$alpha"
done
for t in $TEMPERATURES; do
  run "$OUT/distilled-hard-teacher-T$t" --dataset cifar10 --model alexnet "${ALEXNET_RECIPE[@]}" \
    --teacher "$OUT/teacher-ls0/checkpoint.pt" --distill-temperature "$t" --distill-weight 1
done
for alpha in $ALPHAS; do
  [[ $alpha == 0 ]] && continue
  run "$OUT/distilled-ls-teacher$alpha" --dataset cifar10 --model alexnet "${ALEXNET_RECIPE[@]}" \
    --teacher "$OUT/teacher-ls$alpha/checkpoint.pt" --distill-temperature 1 --distill-weight 1
done

{
  printf 'scenario\talpha\tT\tgamma\ttest_accuracy\n'
  for alpha in $ALPHAS; do
    printf 'teacher\t%s\t1\t%s\t%s\n' "$alpha" "$alpha" "$(metric "$OUT/teacher-ls$alpha" test_accuracy)"
    printf 'student\t%s\t1\t%s\t%s\n' "$alpha" "$alpha" "$(metric "$OUT/student-ls$alpha" test_accuracy)"
  done
  for t in $TEMPERATURES; do
    dir=$OUT/distilled-hard-teacher-T$t
    printf 'distilled, hard teacher\t0\t%s\t%s\t%s\n' "$t" "$(metric "$dir" teacher_gamma)" \
      "$(metric "$dir" test_accuracy)"
  done
  for alpha in $ALPHAS; do
    [[ $alpha == 0 ]] && continue
    dir=$OUT/distilled-ls-teacher$alpha
    printf 'distilled, LS teacher\t%s\t1\t%s\t%s\n' "$alpha" "$(metric "$dir" teacher_gamma)" \
      "$(metric "$dir" test_accuracy)"
  done
} | tee "$OUT/fig5.tsv"
ls-vision plot-fig5 "$OUT"/teacher-ls* "$OUT"/student-ls* "$OUT"/distilled-* --out "$OUT/fig5.png"
