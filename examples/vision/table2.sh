#!/usr/bin/env bash
# Paper Table 2: top-1 accuracy with and without label smoothing (alpha = 0.1):
# AlexNet on CIFAR-10 (paper: 86.8 / 86.7) and ResNet-56 on CIFAR-100 (72.1 / 72.7).
# Downloads CIFAR into $DATA_DIR on first use; a GPU is strongly recommended.
# Usage: bash examples/vision/table2.sh [OUT_DIR]
set -euo pipefail
source "$(dirname "$0")/common.sh"
OUT=${1:-runs/vision}

for alpha in 0 0.1; do
  run "$OUT/cifar10-alexnet-ls$alpha" --dataset cifar10 --model alexnet "${ALEXNET_RECIPE[@]}" \
    --label-smoothing "$alpha"
  run "$OUT/cifar100-resnet56-ls$alpha" --dataset cifar100 --model resnet56 \
    "${RESNET_CIFAR100_RECIPE[@]}" --label-smoothing "$alpha"
done

printf 'data set\tarchitecture\tw/o LS\tw/ LS (0.1)\n'
for pair in cifar10-alexnet cifar100-resnet56; do
  printf '%s\t%s\t%.1f\t%.1f\n' "${pair%%-*}" "${pair#*-}" \
    "$(python3 -c "print(100 * $(metric "$OUT/$pair-ls0" test_accuracy))")" \
    "$(python3 -c "print(100 * $(metric "$OUT/$pair-ls0.1" test_accuracy))")"
done
