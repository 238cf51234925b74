#!/usr/bin/env bash
# Paper Fig. 4 on the offline es->en Bible corpus: scale the logits by a temperature T during beam
# search and watch BLEU, token-level NLL and ECE move, for a transformer trained with hard targets
# and one trained with label smoothing (alpha = 0.1), side by side -- one `ls-sweep` command.
#
# Usage: bash examples/translation/bible/sweep.sh [WORKDIR]      (default: work/sweep)
# Knobs (environment): TRAIN_SIZE (default 20000 pairs), MAX_EPOCH (6), BEAM (4),
#   TEMPERATURES (0.5:2.0:0.125, START:STOP:STEP), TEMPERATURE_BATCH (1: BLEU identical to
#   fairseq-generate --temperature T; larger is faster), CPU (--cpu; empty to use a GPU).
# Re-running skips what is done: the corpus, the trained models and the finished sweep points.
set -euo pipefail
cd "$(dirname "$0")/../../.."
WORK=${1:-work/sweep}
TRAIN_SIZE=${TRAIN_SIZE:-20000}
MAX_EPOCH=${MAX_EPOCH:-6}
BEAM=${BEAM:-4}
TEMPERATURES=${TEMPERATURES:-0.5:2.0:0.125}
TEMPERATURE_BATCH=${TEMPERATURE_BATCH:-1}
CPU=${CPU---cpu}
mkdir -p "$WORK"

if [ ! -f "$WORK/corpus/bin/dict.en.txt" ]; then
  echo "== preparing the es->en Bible corpus ($TRAIN_SIZE training pairs)"
  python scripts/prepare_bible.py "$WORK/corpus" --train-size "$TRAIN_SIZE" --valid-size 500 \
    --test-size 500 --vocab-size 4000 --binarize
fi
DATA=$WORK/corpus/bin

MODEL=(--task translation --arch transformer --share-all-embeddings
       --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256 --decoder-embed-dim 256
       --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
       --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.2
       --optimizer adam --adam-betas '(0.9, 0.98)' --lr 0.002 --lr-scheduler inverse_sqrt
       --warmup-updates 400 --max-tokens 6000 --max-epoch "$MAX_EPOCH" $CPU --seed 1
       --no-epoch-checkpoints --log-format simple --log-interval 50)

for run in hard:0.0 ls:0.1; do
  name=${run%%:*}; alpha=${run##*:}
  if [ ! -f "$WORK/$name/checkpoint_best.pt" ]; then
    mkdir -p "$WORK/$name"
    echo "== training '$name' with --criterion smoothed_ce --label-smoothing $alpha"
    fairseq-train "$DATA" --user-dir ls_plugins "${MODEL[@]}" --criterion smoothed_ce \
      --label-smoothing "$alpha" --save-dir "$WORK/$name" \
      2>&1 | tee "$WORK/$name/train.log" | grep -E "valid on|done training" || true
    [ -f "$WORK/$name/checkpoint_best.pt" ] || { echo "training $name failed: see $WORK/$name/train.log"; exit 1; }
  fi
done

echo "== ls-sweep: beam $BEAM, T in $TEMPERATURES (test set)"
ls-sweep "$DATA" --model "hard=$WORK/hard/checkpoint_best.pt" --model "ls=$WORK/ls/checkpoint_best.pt" \
  --temperature-range "$TEMPERATURES" --temperature-batch "$TEMPERATURE_BATCH" \
  --gen-subset test --beam "$BEAM" --max-tokens 6000 --required-batch-size-multiple 1 \
  --remove-bpe sentencepiece $CPU --output-dir "$WORK/fig4" | tee "$WORK/fig4.txt"
echo "== wrote $WORK/fig4/sweep.png (paper Fig. 4), sweep.json, sweep.csv; the table is in $WORK/fig4.txt"
