#!/usr/bin/env bash
# Paper Fig. 4 on the offline es->en Bible corpus: scale the logits by a temperature T during beam
# search and watch BLEU, token-level NLL and ECE move, for a transformer trained with hard targets
# and one trained with label smoothing (alpha = 0.1), side by side -- one `ls-sweep` command.
#
# Usage: bash examples/translation/bible/sweep.sh [WORKDIR]      (default: work/sweep)
# Knobs (environment): those of common.sh (TRAIN_SIZE, EVAL_SIZE, VOCAB_SIZE, MAX_EPOCH, CPU),
#   BEAM (4), TEMPERATURES (0.5:2.0:0.125, START:STOP:STEP), TEMPERATURE_BATCH (1: BLEU identical
#   to fairseq-generate --temperature T; larger is faster).
# Re-running skips what is done: the corpus, the trained models and the finished sweep points;
# given demo.sh's WORKDIR it sweeps demo.sh's models.
set -euo pipefail
cd "$(dirname "$0")/../../.."
source examples/translation/bible/common.sh
WORK=${1:-work/sweep}
BEAM=${BEAM:-4}
TEMPERATURES=${TEMPERATURES:-0.5:2.0:0.125}
TEMPERATURE_BATCH=${TEMPERATURE_BATCH:-1}
DATA=$WORK/corpus/bin
mkdir -p "$WORK"
prepare_corpus "$WORK"
train_hard_and_ls "$WORK"

echo "== ls-sweep: beam $BEAM, T in $TEMPERATURES (test set)"
ls-sweep "$DATA" --model "hard=$WORK/hard/checkpoint_best.pt" --model "ls=$WORK/ls/checkpoint_best.pt" \
  --temperature-range "$TEMPERATURES" --temperature-batch "$TEMPERATURE_BATCH" \
  --gen-subset test --beam "$BEAM" --max-tokens 6000 --required-batch-size-multiple 1 \
  --remove-bpe sentencepiece $CPU --output-dir "$WORK/fig4" | tee "$WORK/fig4.txt"
echo "== wrote $WORK/fig4/sweep.png (paper Fig. 4), sweep.json, sweep.csv; the table is in $WORK/fig4.txt"
