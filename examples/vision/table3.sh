#!/usr/bin/env bash
# Paper Table 3 and Fig. 2 (left), ResNet-56 on CIFAR-100: ECE of hard targets at T = 1
# (paper: 0.150), after temperature scaling fitted on the validation split (0.021 at T = 1.9),
# and with label smoothing alpha = 0.05 at T = 1 (0.024).  The alpha = 0 run is shared with
# table2.sh when both use the same OUT_DIR.
# Usage: bash examples/vision/table3.sh [OUT_DIR]
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${1:-runs/vision}

for alpha in 0 0.05; do
  run "$OUT/cifar100-resnet56-ls$alpha" --dataset cifar100 --model resnet56 \
    "${RESNET_CIFAR100_RECIPE[@]}" --label-smoothing "$alpha"
done

hard=$OUT/cifar100-resnet56-ls0
smooth=$OUT/cifar100-resnet56-ls0.05
printf 'baseline ECE (T=1, a=0)\ttemp. scaling ECE / T (a=0)\tlabel smoothing ECE / a (T=1)\n'
printf '%.3f\t%.3f / %.2f\t%.3f / 0.05\n' "$(metric "$hard" test_ece)" \
  "$(metric "$hard" test_ece_scaled)" "$(metric "$hard" temperature)" "$(metric "$smooth" test_ece)"
ls-vision plot "$hard" "$smooth" --out "$OUT/fig2-cifar100-resnet56.png" \
  --title "ResNet-56 / CIFAR-100 (test)"
