#!/usr/bin/env bash
# Real data, offline, CPU (Debian's dataset-fashion-mnist): a 784-512-512-10 MLP trained with Adam
# for 15 epochs, hard targets and label smoothing 0.05, without augmentation (the over-confident
# regime of paper Table 3) and with random shifts of up to 2 pixels; then Fig. 2-style diagrams.
# Usage: bash examples/vision/fashion.sh [OUT_DIR]      (FASHION_MNIST_DIR: where the files are)
set -euo pipefail
source "$(dirname "$0")/common.sh"
DATA_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}  # the idx .gz files
OUT=${1:-runs/vision/fashion}
MLP_RECIPE=(--dataset fashion-mnist --model mlp --mlp-depth 2 --mlp-width 512 --optimizer adam
            --lr 0.001 --lr-scheduler step --epochs 15 --batch-size 128)

for augment in no-augment augment; do
  for alpha in 0 0.05; do
    run "$OUT/mlp-$augment-ls$alpha" "${MLP_RECIPE[@]}" "--$augment" --label-smoothing "$alpha"
  done
  ls-vision plot "$OUT/mlp-$augment-ls0" "$OUT/mlp-$augment-ls0.05" --out "$OUT/reliability-$augment.png" \
    --title "MLP / Fashion-MNIST, $augment (test)"
done
printf 'run\taccuracy\tECE\tconfidence\tfitted T\tECE at T\n'
for augment in no-augment augment; do
  for alpha in 0 0.05; do
    dir=$OUT/mlp-$augment-ls$alpha
    printf '%s\t%.4f\t%.4f\t%.4f\t%.3f\t%.4f\n' "$augment, alpha=$alpha" "$(metric "$dir" test_accuracy)" \
      "$(metric "$dir" test_ece)" "$(metric "$dir" test_confidence)" "$(metric "$dir" temperature)" \
      "$(metric "$dir" test_ece_scaled)"
  done
done
