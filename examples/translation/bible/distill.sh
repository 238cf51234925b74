#!/usr/bin/env bash
# Does a label-smoothed teacher distil worse? (paper section 4, Fig. 5) on the offline es->en Bible.
#
#   1. two teachers: hard targets (alpha = 0) and label smoothing (alpha = ALPHA), smoothed_ce;
#   2. a top-k cache of each teacher (ls-cache-teacher, train and valid);
#   3. students distilled from each teacher, with the live teacher and from the cache
#      (distillation_ce, beta = BETA, temperature T), and two students without a teacher
#      (smoothed_ce with alpha = 0 and alpha = ALPHA: is distillation worth more than smoothing?);
#   4. a table: teacher, how the teacher was used, the teacher's equivalent smoothing gamma,
#      the student's validation NLL (bits/token, teacher forcing) and test BLEU.
#
# Usage: bash examples/translation/bible/distill.sh [OUT_DIR]     (default work/distill)
# The defaults take roughly 10-15 minutes on 2 CPU cores (tiny models: the numbers are noisy
# and BLEU is near 0; most of the time is fairseq start-up and decoding); a smoke run (about 5
# minutes): TRAIN_SIZE=1500 EVAL_SIZE=100 TEACHER_UPDATES=40 STUDENT_UPDATES=20 BLEU=0.
# For a real comparison raise TRAIN_SIZE (0: all 31k verses), the updates and the model sizes.
# Environment: TRAIN_SIZE=3000 EVAL_SIZE=200 VOCAB=1000 TEACHER_UPDATES=300 STUDENT_UPDATES=200
#              ALPHA=0.1 T=2 BETA=0.5 TOPK=8 BLEU=1 (0: skip test BLEU) BEAM=4
#              CPU=--cpu (empty to use a GPU)
set -euo pipefail
OUT=${1:-work/distill}
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
USER_DIR=$REPO/ls_plugins
TRAIN_SIZE=${TRAIN_SIZE:-3000} EVAL_SIZE=${EVAL_SIZE:-200} VOCAB=${VOCAB:-1000} BLEU=${BLEU:-1}
TEACHER_UPDATES=${TEACHER_UPDATES:-300} STUDENT_UPDATES=${STUDENT_UPDATES:-200}
ALPHA=${ALPHA:-0.1} T=${T:-2} BETA=${BETA:-0.5} TOPK=${TOPK:-8} BEAM=${BEAM:-4} CPU=${CPU---cpu}

COMMON=(--task translation --arch transformer --share-all-embeddings --optimizer adam
        --adam-betas '(0.9, 0.98)' --lr 0.002 --lr-scheduler inverse_sqrt --warmup-updates 50
        --max-tokens 4000 --seed 1 $CPU --no-progress-bar --log-interval 50
        --no-epoch-checkpoints --validate-interval-updates 100)
TEACHER=(--encoder-layers 2 --decoder-layers 2 --encoder-embed-dim 128 --decoder-embed-dim 128
         --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256
         --encoder-attention-heads 4 --decoder-attention-heads 4)
STUDENT=(--encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 64 --decoder-embed-dim 64
         --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128
         --encoder-attention-heads 2 --decoder-attention-heads 2)

DATA=$OUT/corpus/bin
if [[ ! -f $DATA/dict.en.txt ]]; then
  size=(); [[ $TRAIN_SIZE != 0 ]] && size=(--train-size "$TRAIN_SIZE")
  python "$REPO/scripts/prepare_bible.py" "$OUT/corpus" "${size[@]}" --valid-size "$EVAL_SIZE" \
    --test-size "$EVAL_SIZE" --vocab-size "$VOCAB" --binarize > /dev/null
fi

source "$REPO/examples/translation/bible/common.sh"
# train DIR ARGS...: fairseq-train with the shared options into DIR, log in DIR/train.log (train_once
# of common.sh: skipped when DIR holds a finished run, resumed when it holds an interrupted one)
train() {
  local dir=$1; shift
  train_once "$dir" "$DATA" --user-dir "$USER_DIR" "${COMMON[@]}" "$@"
}
# last VALUE KEY of the validation lines of a training log
last_valid() { grep "valid on 'valid' subset" "$1/train.log" | tail -n 1 | grep -o "| $2 [0-9.e-]*" | awk '{print $3}'; }
bleu() {  # test BLEU (sacrebleu on detokenised text) of DIR/checkpoint_best.pt
  [[ $BLEU == 0 ]] && { echo -; return; }
  fairseq-generate "$DATA" --user-dir "$USER_DIR" --path "$1/checkpoint_best.pt" --gen-subset test \
    --beam "$BEAM" --max-len-a 1.5 --max-len-b 10 --max-tokens 4000 $CPU \
    --remove-bpe sentencepiece --scoring sacrebleu --quiet 2>/dev/null \
    | grep -o "BLEU = [0-9.]*" | awk '{print $3}'
}

for alpha in 0 "$ALPHA"; do
  teacher=$OUT/teacher-ls$alpha
  train "$teacher" "${TEACHER[@]}" --criterion smoothed_ce --label-smoothing "$alpha" \
    --max-update "$TEACHER_UPDATES"
  if [[ ! -f $OUT/cache-ls$alpha/valid/manifest.json ]]; then
    ls-cache-teacher "$DATA" --teacher-path "$teacher/checkpoint_best.pt" --split train,valid \
      --topk "$TOPK" --temperature "$T" --out "$OUT/cache-ls$alpha" --no-progress-bar \
      > "$OUT/cache-ls$alpha.log" 2>&1 || { tail -n 5 "$OUT/cache-ls$alpha.log" >&2; exit 1; }
  fi
  distill=(--criterion distillation_ce --distill-temperature "$T" --distill-weight "$BETA"
           --max-update "$STUDENT_UPDATES")
  train "$OUT/student-live-ls$alpha" "${STUDENT[@]}" "${distill[@]}" \
    --teacher-path "$teacher/checkpoint_best.pt"
  train "$OUT/student-cache-ls$alpha" "${STUDENT[@]}" "${distill[@]}" \
    --teacher-cache "$OUT/cache-ls$alpha" --teacher-topk "$TOPK"
  train "$OUT/student-ls$alpha" "${STUDENT[@]}" --criterion smoothed_ce --label-smoothing "$alpha" \
    --max-update "$STUDENT_UPDATES"
done

{
  printf 'model\tteacher_alpha\tteacher_use\tgamma\tvalid_nll_bits\ttest_bleu\n'
  for alpha in 0 "$ALPHA"; do
    printf 'teacher\t%s\t-\t%s\t%s\t%s\n' "$alpha" "$alpha" "$(last_valid "$OUT/teacher-ls$alpha" nll_loss)" \
      "$(bleu "$OUT/teacher-ls$alpha")"
    printf 'student (label smoothing %s, no teacher)\t-\t-\t%s\t%s\t%s\n' "$alpha" "$alpha" \
      "$(last_valid "$OUT/student-ls$alpha" nll_loss)" "$(bleu "$OUT/student-ls$alpha")"
    for use in live cache; do
      dir=$OUT/student-$use-ls$alpha
      printf 'student (distilled, T=%s, beta=%s)\t%s\t%s\t%s\t%s\t%s\n' "$T" "$BETA" "$alpha" "$use" \
        "$(last_valid "$dir" teacher_gamma)" "$(last_valid "$dir" nll_loss)" "$(bleu "$dir")"
    done
  done
} | tee "$OUT/distill.tsv"
echo "table: $OUT/distill.tsv  (gamma of a distilled student: its teacher's equivalent smoothing at T on valid)"
