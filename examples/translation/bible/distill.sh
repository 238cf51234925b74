#!/usr/bin/env bash
# Does a label-smoothed teacher distil worse? (paper section 4, Fig. 5) on the offline es->en Bible,
# comparing teachers at equal equivalent smoothing gamma.
#
#   1. teachers: hard targets (alpha = 0) and label smoothing (each alpha of ALPHAS), smoothed_ce;
#   2. per alpha, `ls-nmt-analysis match-gamma`: the LS teacher's gamma at T = 1 on the training
#      split, and the temperature T_a at which the hard teacher's gamma on train equals it;
#   3. a top-k cache of each teacher at the temperature it is distilled at (ls-cache-teacher:
#      the hard teacher at T_a, the LS teacher at T = 1);
#   4. students distilled (distillation_ce, beta = BETA) from the hard teacher at T_a and from the
#      LS teacher at T = 1, each with the live teacher and from the cache, and students without a
#      teacher (smoothed_ce with alpha = 0 and each alpha: is distillation worth more than
#      smoothing?);
#   5. test BLEU of every model (fairseq-generate, output kept in DIR/generate-test.txt), a table
#      and the Fig. 5 analogue: BLEU against gamma (`ls-nmt-analysis plot-gamma`), plus Fig. 1
#      for the teachers (`ls-nmt-analysis project`: decoder states at ▁the, ▁of, ▁and).
#
# Usage: bash examples/translation/bible/distill.sh [OUT_DIR]     (default work/distill)
# Outputs: OUT/distill.tsv (the table), OUT/fig5-points.tsv and OUT/fig5.png (BLEU against
# gamma; the students are the live-teacher ones), OUT/match-ls<alpha>.json (T_a, gammas, every
# bisection step), OUT/fig1.png and OUT/fig1.json (projection, tightness per teacher and split).
# The defaults take roughly 15-20 minutes on 2 CPU cores (tiny models: the numbers are noisy and
# BLEU is near 0; most of the time is fairseq start-up and decoding); a smoke run (about 5
# minutes): TRAIN_SIZE=1500 EVAL_SIZE=100 TEACHER_UPDATES=40 STUDENT_UPDATES=20 BLEU=0.
# For a real comparison raise TRAIN_SIZE (0: all 31k verses), the updates and the model sizes,
# and give several ALPHAS (e.g. "0.05 0.1 0.2") for curves rather than points.
# Environment: TRAIN_SIZE=3000 EVAL_SIZE=200 VOCAB=1000 TEACHER_UPDATES=300 STUDENT_UPDATES=200
#              ALPHAS=0.1 BETA=1 (the paper's Fig. 5: the student sees only the teacher) TOPK=8
#              BLEU=1 (0: skip test BLEU and fig5.png) BEAM=4 CPU=--cpu (empty to use a GPU)
set -euo pipefail
OUT=${1:-work/distill}
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
USER_DIR=$REPO/ls_plugins
TRAIN_SIZE=${TRAIN_SIZE:-3000} EVAL_SIZE=${EVAL_SIZE:-200} VOCAB=${VOCAB:-1000} BLEU=${BLEU:-1}
TEACHER_UPDATES=${TEACHER_UPDATES:-300} STUDENT_UPDATES=${STUDENT_UPDATES:-200}
ALPHAS=${ALPHAS:-0.1} BETA=${BETA:-1} TOPK=${TOPK:-8} BEAM=${BEAM:-4} CPU=${CPU---cpu}

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
# once OUTPUT LOG COMMAND...: run COMMAND (which writes OUTPUT) unless OUTPUT exists; its output
# goes to LOG, whose tail is shown if it fails
once() {
  local output=$1 log=$2; shift 2
  [[ -e $output ]] && return 0
  "$@" > "$log" 2>&1 || { tail -n 5 "$log" >&2; echo "failed: $*" >&2; exit 1; }
}
# last VALUE KEY of the validation lines of a training log
last_valid() { grep "valid on 'valid' subset" "$1/train.log" | tail -n 1 | grep -o "| $2 [0-9.e-]*" | awk '{print $3}'; }
# json FILE KEY[.KEY...]: one value of a JSON file
json() { python -c 'import functools, json, sys
print(functools.reduce(lambda d, k: d[k], sys.argv[2].split("."), json.load(open(sys.argv[1]))))' "$1" "$2"; }
bleu() {  # test BLEU (sacrebleu on detokenised text) of DIR/checkpoint_best.pt; output kept in DIR
  [[ $BLEU == 0 ]] && { echo -; return; }
  if [[ ! -f $1/generate-test.txt ]]; then
    fairseq-generate "$DATA" --user-dir "$USER_DIR" --path "$1/checkpoint_best.pt" \
      --gen-subset test --beam "$BEAM" --max-len-a 1.5 --max-len-b 10 --max-tokens 4000 $CPU \
      --remove-bpe sentencepiece --scoring sacrebleu > "$1/generate-test.txt.tmp" \
      2> "$1/generate-test.log" \
      || { echo "fairseq-generate failed: see $1/generate-test.log" >&2; echo -; return; }
    mv "$1/generate-test.txt.tmp" "$1/generate-test.txt"
  fi
  grep -o "BLEU = [0-9.]*" "$1/generate-test.txt" | awk '{print $3}'
}

# 1. teachers
for alpha in 0 $ALPHAS; do
  train "$OUT/teacher-ls$alpha" "${TEACHER[@]}" --criterion smoothed_ce --label-smoothing "$alpha" \
    --max-update "$TEACHER_UPDATES"
done
HARD=$OUT/teacher-ls0/checkpoint_best.pt

# cache_and_distil NAME TEACHER_CKPT T: a top-k cache of the teacher at T, and the two students
# (live teacher and cache) distilled from it at T: OUT/student-{live,cache}-NAME
cache_and_distil() {
  local name=$1 teacher=$2 temperature=$3
  once "$OUT/cache-$name/valid/manifest.json" "$OUT/cache-$name.log" \
    ls-cache-teacher "$DATA" --teacher-path "$teacher" --split train,valid --topk "$TOPK" \
      --temperature "$temperature" --out "$OUT/cache-$name" --no-progress-bar
  local distill=(--criterion distillation_ce --distill-temperature "$temperature"
                 --distill-weight "$BETA" --max-update "$STUDENT_UPDATES")
  train "$OUT/student-live-$name" "${STUDENT[@]}" "${distill[@]}" --teacher-path "$teacher"
  train "$OUT/student-cache-$name" "${STUDENT[@]}" "${distill[@]}" \
    --teacher-cache "$OUT/cache-$name" --teacher-topk "$TOPK"
}

for alpha in $ALPHAS; do
  # 2. the hard teacher's T whose gamma on train equals the LS teacher's gamma at T = 1
  match=$OUT/match-ls$alpha.json
  once "$match" "$OUT/match-ls$alpha.log" \
    ls-nmt-analysis match-gamma "$DATA" --teacher-path "$HARD" \
      --gamma-from-teacher "$OUT/teacher-ls$alpha/checkpoint_best.pt" --split train $CPU \
      --out "$match"
  echo "== alpha $alpha: LS teacher gamma $(json "$match" target_gamma) at T=1; hard teacher" \
       "at T=$(json "$match" temperature): gamma $(json "$match" gamma) (train)"
  # 3-4. distil from each teacher at equal gamma
  cache_and_distil "hard-for-ls$alpha" "$HARD" "$(json "$match" temperature)"
  cache_and_distil "ls$alpha" "$OUT/teacher-ls$alpha/checkpoint_best.pt" 1
done
for alpha in 0 $ALPHAS; do  # students without a teacher
  train "$OUT/student-ls$alpha" "${STUDENT[@]}" --criterion smoothed_ce --label-smoothing "$alpha" \
    --max-update "$STUDENT_UPDATES"
done

# 5. Fig. 1 for the hard teacher and the first LS teacher
first=${ALPHAS%% *}
once "$OUT/fig1.json" "$OUT/fig1.log" \
  ls-nmt-analysis project "$DATA" --model "hard=$HARD" \
    --model "ls $first=$OUT/teacher-ls$first/checkpoint_best.pt" --tokens the,of,and \
    --splits train,valid --max-per-token 300 $CPU --out "$OUT/fig1.png"

# the table, and the points of Fig. 5: (curve, gamma, BLEU); gamma of a distilled student is its
# teacher's on train at the distillation T (from match-gamma), of the others their alpha
{
  printf 'model\tteacher_alpha\tteacher_use\tT\tgamma_train\tvalid_nll_bits\ttest_bleu\n'
  for alpha in 0 $ALPHAS; do
    printf 'teacher\t%s\t-\t-\t%s\t%s\t%s\n' "$alpha" "$alpha" \
      "$(last_valid "$OUT/teacher-ls$alpha" nll_loss)" "$(bleu "$OUT/teacher-ls$alpha")"
    printf 'student (label smoothing %s, no teacher)\t-\t-\t-\t%s\t%s\t%s\n' "$alpha" "$alpha" \
      "$(last_valid "$OUT/student-ls$alpha" nll_loss)" "$(bleu "$OUT/student-ls$alpha")"
  done
  for alpha in $ALPHAS; do
    match=$OUT/match-ls$alpha.json
    for use in live cache; do
      for kind in hard ls; do
        if [[ $kind == hard ]]; then
          dir=$OUT/student-$use-hard-for-ls$alpha teacher=0
          t=$(json "$match" temperature) gamma=$(json "$match" gamma)
        else
          dir=$OUT/student-$use-ls$alpha teacher=$alpha t=1 gamma=$(json "$match" target_gamma)
        fi
        printf 'student (distilled, beta=%s)\t%s\t%s\t%s\t%s\t%s\t%s\n' "$BETA" "$teacher" "$use" \
          "$t" "$gamma" "$(last_valid "$dir" nll_loss)" "$(bleu "$dir")"
      done
    done
  done
} | tee "$OUT/distill.tsv"

{
  printf 'curve\tgamma\tvalue\n'
  for alpha in 0 $ALPHAS; do
    printf 'teacher\t%s\t%s\n' "$alpha" "$(bleu "$OUT/teacher-ls$alpha")"
    printf 'student_ls\t%s\t%s\n' "$alpha" "$(bleu "$OUT/student-ls$alpha")"
  done
  for alpha in $ALPHAS; do
    match=$OUT/match-ls$alpha.json
    printf 'student_hard_teacher\t%s\t%s\n' "$(json "$match" gamma)" \
      "$(bleu "$OUT/student-live-hard-for-ls$alpha")"
    printf 'student_ls_teacher\t%s\t%s\n' "$(json "$match" target_gamma)" \
      "$(bleu "$OUT/student-live-ls$alpha")"
  done
} > "$OUT/fig5-points.tsv"
if [[ $BLEU != 0 ]]; then
  ls-nmt-analysis plot-gamma "$OUT/fig5-points.tsv" --metric "test BLEU" --out "$OUT/fig5.png"
fi
echo "table: $OUT/distill.tsv  figures: $OUT/fig5.png (BLEU against gamma), $OUT/fig1.png" \
     "(decoder states of the teachers, numbers in $OUT/fig1.json)"
