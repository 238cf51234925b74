#!/usr/bin/env bash
# The main job of `make demo`: on the offline es->en Bible corpus, train a transformer with hard
# targets and one with label smoothing (alpha = 0.1), both with the stock fairseq-train plus
# `--user-dir ls_plugins --criterion smoothed_ce`, then measure BLEU and token-level calibration
# with the stock fairseq-generate (paper section 3, Table 3 and Fig. 3).
#
# Usage: examples/translation/bible/demo.sh [WORKDIR]    (default: work/demo)
# Knobs (environment): TRAIN_SIZE (default 20000 pairs), EVAL_SIZE (500 valid and 500 test
# pairs), VOCAB_SIZE (4000 joint sentencepiece pieces), MAX_EPOCH (6), BEAM (4).
set -euo pipefail
cd "$(dirname "$0")/../../.."
WORK=${1:-work/demo}
TRAIN_SIZE=${TRAIN_SIZE:-20000}
EVAL_SIZE=${EVAL_SIZE:-500}
VOCAB_SIZE=${VOCAB_SIZE:-4000}
MAX_EPOCH=${MAX_EPOCH:-6}
BEAM=${BEAM:-4}
mkdir -p "$WORK"

if [ ! -f "$WORK/corpus/bin/dict.en.txt" ]; then
  echo "== preparing the es->en Bible corpus ($TRAIN_SIZE training pairs)"
  python scripts/prepare_bible.py "$WORK/corpus" --train-size "$TRAIN_SIZE" \
    --valid-size "$EVAL_SIZE" --test-size "$EVAL_SIZE" --vocab-size "$VOCAB_SIZE" --binarize
fi
DATA=$WORK/corpus/bin

MODEL=(--task translation --arch transformer --share-all-embeddings
       --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256 --decoder-embed-dim 256
       --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
       --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.2
       --optimizer adam --adam-betas '(0.9, 0.98)' --lr 0.002 --lr-scheduler inverse_sqrt
       --warmup-updates 400 --max-tokens 6000 --max-epoch "$MAX_EPOCH" --cpu --seed 1
       --no-epoch-checkpoints --log-format simple --log-interval 50)

for run in hard:0.0 ls:0.1; do
  name=${run%%:*}; alpha=${run##*:}
  if [ ! -f "$WORK/$name/checkpoint_best.pt" ]; then
    mkdir -p "$WORK/$name"
    echo "== training '$name' with --criterion smoothed_ce --label-smoothing $alpha"
    fairseq-train "$DATA" --user-dir ls_plugins "${MODEL[@]}" --criterion smoothed_ce \
      --label-smoothing "$alpha" --report-accuracy --save-dir "$WORK/$name" \
      2>&1 | tee "$WORK/$name/train.log" | grep -E "valid on|done training" || true
    [ -f "$WORK/$name/checkpoint_best.pt" ] || { echo "training $name failed: see $WORK/$name/train.log"; exit 1; }
  fi
done

generate() {  # name temperature output-prefix
  fairseq-generate "$DATA" --user-dir ls_plugins --task translation_calibration --scoring calibration \
    --path "$WORK/$1/checkpoint_best.pt" --gen-subset test --beam "$BEAM" --max-tokens 6000 \
    --required-batch-size-multiple 1 --max-len-a 1.2 --max-len-b 10 --remove-bpe sentencepiece \
    --cpu --temperature "$2" \
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
