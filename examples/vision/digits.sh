#!/usr/bin/env bash
# Offline demo (no download, CPU, about a minute): a small CNN on scikit-learn's 8x8 digits with
# hard targets and with label smoothing 0.1, then the Fig. 2-style reliability diagram.
# Usage: bash examples/vision/digits.sh [OUT_DIR]
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${1:-runs/vision/digits}

for alpha in 0 0.1; do
  run "$OUT/smallcnn-ls$alpha" --dataset digits --model smallcnn --epochs 40 --label-smoothing "$alpha"
done
ls-vision plot "$OUT/smallcnn-ls0" "$OUT/smallcnn-ls0.1" --out "$OUT/reliability.png" \
  --title "small CNN / digits (test)"
printf 'alpha\taccuracy\tECE\tconfidence-accuracy\tfitted T\n'
for alpha in 0 0.1; do
  dir=$OUT/smallcnn-ls$alpha
  printf '%s\t%.4f\t%.4f\t%+.4f\t%.3f\n' "$alpha" "$(metric "$dir" test_accuracy)" \
    "$(metric "$dir" test_ece)" "$(metric "$dir" test_overconfidence)" "$(metric "$dir" temperature)"
done
