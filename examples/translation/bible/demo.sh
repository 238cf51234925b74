#!/usr/bin/env bash
# Paper section 3 as a bash recipe (`make demo` runs scripts/demo.py, which does this and more):
# on the offline es->en Bible corpus, train a transformer with hard
# targets and one with label smoothing (alpha = 0.1), both with the stock fairseq-train plus
# `--user-dir ls_plugins --criterion smoothed_ce`, then measure BLEU and token-level calibration
# with the stock fairseq-generate (paper section 3, Table 3 and Fig. 3).
#
# Usage: examples/translation/bible/demo.sh [WORKDIR]    (default: work/demo)
# Knobs (environment): those of common.sh (TRAIN_SIZE, EVAL_SIZE, VOCAB_SIZE, MAX_EPOCH, CPU) and
# BEAM (4).
set -euo pipefail
cd "$(dirname "$0")/../../.."
source examples/translation/bible/common.sh
WORK=${1:-work/demo}
BEAM=${BEAM:-4}
DATA=$WORK/corpus/bin
mkdir -p "$WORK"
prepare_corpus "$WORK"
train_hard_and_ls "$WORK"

generate() {  # name temperature output-prefix
  fairseq-generate "$DATA" --user-dir ls_plugins --task translation_calibration --scoring calibration \
    --path "$WORK/$1/checkpoint_best.pt" --gen-subset test --beam "$BEAM" --max-tokens 6000 \
    --required-batch-size-multiple 1 --max-len-a 1.2 --max-len-b 10 --remove-bpe sentencepiece \
    $CPU --temperature "$2" \
    --calibration-json "$3.json" --calibration-plot "$3.png" --calibration-fit-temperature \
    > "$3.txt" 2> "$3.log"
  grep -E "^(Generate|Calibration)" "$3.txt"
}

echo "== fairseq-generate with token-level calibration (test set, beam $BEAM)"
for name in hard ls; do
  echo "-- $name"
  generate "$name" 1.0 "$WORK/$name/test"
done
T_HARD=$(python -c "import json; print(round(json.load(open('$WORK/hard/test.json'))['fitted_temperature'], 2))")
echo "-- hard targets with temperature scaling (NLL-optimal T = $T_HARD)"
generate hard "$T_HARD" "$WORK/hard/test_T"

python scripts/compare_calibration.py "$WORK/reliability.png" \
  "hard targets=$WORK/hard/test.json" "hard + T=$T_HARD=$WORK/hard/test_T.json" \
  "label smoothing 0.1=$WORK/ls/test.json"
echo "== wrote $WORK/reliability.png (paper Fig. 3 style) and the per-run JSON/PNG files in $WORK/{hard,ls}"
