#!/usr/bin/env bash
# Paper Figs. 1 and 6 on real data, offline, on one CPU core (Debian's dataset-fashion-mnist):
# a 784-512-512-10 MLP (Adam, random shifts of up to 2 pixels) trained with hard targets and with
# label smoothing alpha = 0.1, each with the mutual information probe after every epoch
# (--mi-every 1: N = 600 training images of T-shirt/top and shirt, 8 shifts each), then
#   $OUT/fig1.png + fig1.json: penultimate activations of T-shirt/top, pullover and shirt (the
#       semantically close classes, like the paper's poodles) on their templates' plane, training
#       and validation splits, with cluster tightness and distances to the wrong templates;
#   $OUT/fig6.png: the mutual information estimates of both runs against the epoch.
# Usage: bash examples/vision/fig1_fig6_fashion.sh [OUT_DIR]     (EPOCHS, FASHION_MNIST_DIR)
set -euo pipefail
source "$(dirname "$0")/common.sh"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}  # small MLPs: 1 thread
DATA_DIR=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
OUT=${1:-runs/vision/fig1-fig6-fashion}
RECIPE=(--dataset fashion-mnist --model mlp --mlp-depth 2 --mlp-width 512 --optimizer adam --lr 0.001
        --lr-scheduler step --batch-size 128 --epochs "${EPOCHS:-5}"
        --mi-every 1 --mi-classes 0,6 --mi-examples 600 --mi-augmentations 8)

for alpha in 0 0.1; do
  run "$OUT/mlp-ls$alpha" "${RECIPE[@]}" --label-smoothing "$alpha"
done
ls-vision project "$OUT/mlp-ls0" "$OUT/mlp-ls0.1" --classes 0,2,6 --max-per-class 300 --out "$OUT/fig1.png"
ls-vision plot-mi "$OUT/mlp-ls0" "$OUT/mlp-ls0.1" --out "$OUT/fig6.png"
