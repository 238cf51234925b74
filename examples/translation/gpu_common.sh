# Shared by the GPU recipes for the standard corpora (iwslt14_de_en/run.sh, wmt16_en_de/run.sh):
# the paper's experiments after data preparation, as functions of the settings the recipe sets
# before sourcing this file:
#   WORK       the recipe's working directory;  DATA  the binarised corpus (joined dictionary)
#   MODEL      fairseq-train options of every model (architecture, optimisation, batching)
#   MAX_UPDATE the teachers' updates;  STUDENT  options appended to MODEL for the students (a
#              smaller model, their --max-update)
#   GENERATE   beam-search and scoring options shared by fairseq-generate and ls-sweep
#   ALPHA (0.1), TEMPERATURES (the sweep), DISTILL_TEMPERATURES, TOPK, FP16 (--fp16 or empty)
#
# Steps (each skips what a previous run finished; fairseq-train resumes an interrupted run):
#   train     hard targets (alpha = 0) and label smoothing (alpha = ALPHA) with smoothed_ce
#   evaluate  fairseq-generate with token-level calibration: each model on valid (with the
#             NLL-optimal temperature fitted there) and test, the hard-target model again on test
#             at its fitted T (paper Table 3 / Fig. 3), and one reliability diagram of the three
#   sweep     ls-sweep over beam-search temperatures (paper Fig. 4)
#   distill   ls-cache-teacher for each teacher, then students (paper section 4, Fig. 5, beta = 1):
#             from the hard-target teacher at each of DISTILL_TEMPERATURES, from the
#             label-smoothed teacher at T = 1, and without a teacher (alpha = 0 and ALPHA)
#
# DRY_RUN=1 prints every command instead of running it, one per line, "+ prog arg ..." with the
# arguments quoted by printf %q (Python's shlex.split reads them back); nothing is downloaded,
# written or run.  tests/test_recipes_dryrun.py parses every printed command with fairseq's or
# our own argument parser.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
USER_DIR=$REPO/ls_plugins
DRY_RUN=${DRY_RUN:-0}

dry() { [[ $DRY_RUN == 1 ]]; }

# run CMD ARGS...: run a command, or print it under DRY_RUN=1
run() {
  if dry; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# run_logged LOG CMD ARGS...: run a command with its stdout and stderr in LOG (the end of LOG is
# shown if it fails); under DRY_RUN=1 print it
run_logged() {
  local log=$1; shift
  if dry; then run "$@"; return; fi
  if ! "$@" > "$log" 2>&1; then
    echo "failed: $1 (log: $log)" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}

# finished FILE: true (and says so) when a previous run left FILE
finished() {
  if [[ -e $1 ]]; then echo "finished already: $1"; return 0; fi
  return 1
}

# train_model DIR ARGS...: fairseq-train on DATA into DIR (log DIR/train.log), marked DIR/done
train_model() {
  local dir=$1; shift
  finished "$dir/done" && return
  echo "== training $dir (log: $dir/train.log)"
  run mkdir -p "$dir"
  run_logged "$dir/train.log" fairseq-train "$DATA" --user-dir "$USER_DIR" "$@" --save-dir "$dir"
  dry || touch "$dir/done"
}

step_train() {
  local name alpha
  for name in hard ls; do
    alpha=0.0; [[ $name == ls ]] && alpha=$ALPHA
    train_model "$WORK/$name" "${MODEL[@]}" --max-update "$MAX_UPDATE" --criterion smoothed_ce \
      --label-smoothing "$alpha" --report-accuracy
  done
}

# generate CHECKPOINT SUBSET TEMPERATURE OUT [ARGS...]: fairseq-generate with token-level
# calibration: OUT.txt (hypotheses, BLEU and calibration lines), OUT.json, OUT.png
generate() {
  local checkpoint=$1 subset=$2 temperature=$3 out=$4; shift 4
  finished "$out.json" && return
  run_logged "$out.txt" fairseq-generate "$DATA" --user-dir "$USER_DIR" \
    --task translation_calibration --scoring calibration --path "$checkpoint" \
    --gen-subset "$subset" --temperature "$temperature" "${GENERATE[@]}" \
    --calibration-json "$out.json" --calibration-plot "$out.png" "$@"
  dry || grep -E "^(Generate|Calibration)" "$out.txt"
}

# fitted_temperature JSON: the NLL-optimal temperature a --calibration-fit-temperature run found
# (1.0 under DRY_RUN=1, where nothing has run)
fitted_temperature() {
  if dry; then echo 1.0; return; fi
  python -c "import json, sys; print(round(json.load(open(sys.argv[1]))['fitted_temperature'], 2))" "$1"
}

step_evaluate() {
  local name t_hard
  echo "== fairseq-generate with token-level calibration (valid: fit T; test)"
  for name in hard ls; do
    generate "$WORK/$name/checkpoint_best.pt" valid 1.0 "$WORK/$name/valid" --calibration-fit-temperature
    generate "$WORK/$name/checkpoint_best.pt" test 1.0 "$WORK/$name/test"
  done
  t_hard=$(fitted_temperature "$WORK/hard/valid.json")
  echo "== hard targets, temperature-scaled: T = $t_hard (NLL-optimal on valid)"
  generate "$WORK/hard/checkpoint_best.pt" test "$t_hard" "$WORK/hard/test_T"
  run python "$REPO/scripts/compare_calibration.py" "$WORK/reliability.png" \
    "hard targets=$WORK/hard/test.json" "hard targets, T=$t_hard=$WORK/hard/test_T.json" \
    "label smoothing $ALPHA=$WORK/ls/test.json"
}

step_sweep() {
  finished "$WORK/sweep/sweep.json" && return
  echo "== ls-sweep over beam-search temperatures $TEMPERATURES (test)"
  run ls-sweep "$DATA" --model "hard=$WORK/hard/checkpoint_best.pt" \
    --model "ls=$WORK/ls/checkpoint_best.pt" --temperature-range "$TEMPERATURES" \
    --gen-subset test "${GENERATE[@]}" --output-dir "$WORK/sweep"
}

step_distill() {
  local name t dir alpha
  for name in hard ls; do
    if ! finished "$WORK/distill/cache-$name/valid/manifest.json"; then
      echo "== ls-cache-teacher: top-$TOPK of the '$name' teacher on train and valid"
      run mkdir -p "$WORK/distill"
      run_logged "$WORK/distill/cache-$name.log" ls-cache-teacher "$DATA" \
        --teacher-path "$WORK/$name/checkpoint_best.pt" --split train,valid --topk "$TOPK" \
        --temperature 1 --max-tokens "$CACHE_MAX_TOKENS" $FP16 --no-progress-bar \
        --out "$WORK/distill/cache-$name"
    fi
  done
  local students=()
  for t in $DISTILL_TEMPERATURES; do
    dir=$WORK/distill/student-hard-T$t
    students+=("$dir")
    train_model "$dir" "${MODEL[@]}" "${STUDENT[@]}" --criterion distillation_ce --distill-weight 1 \
      --distill-temperature "$t" --teacher-cache "$WORK/distill/cache-hard"
  done
  dir=$WORK/distill/student-ls-T1
  students+=("$dir")
  train_model "$dir" "${MODEL[@]}" "${STUDENT[@]}" --criterion distillation_ce --distill-weight 1 \
    --distill-temperature 1 --teacher-cache "$WORK/distill/cache-ls"
  for alpha in 0.0 "$ALPHA"; do
    dir=$WORK/distill/student-alone-ls$alpha
    students+=("$dir")
    train_model "$dir" "${MODEL[@]}" "${STUDENT[@]}" --criterion smoothed_ce --label-smoothing "$alpha"
  done
  for dir in "${students[@]}"; do
    generate "$dir/checkpoint_best.pt" test 1.0 "$dir/test"
  done
  dry || distill_table "${students[@]}" | tee "$WORK/distill/students.tsv"
}

# distill_table STUDENT_DIR...: student, the teacher's gamma logged on valid, valid NLL, test BLEU/ECE
distill_table() {
  local dir
  printf 'student\tteacher_gamma\tvalid_nll_bits\ttest_bleu\ttest_ece\n'
  for dir in "$@"; do
    printf '%s\t%s\t%s\t%s\t%s\n' "${dir##*/}" "$(last_valid "$dir" teacher_gamma)" \
      "$(last_valid "$dir" nll_loss)" \
      "$(grep -o "BLEU = [0-9.]*" "$dir/test.txt" | awk '{print $3}')" \
      "$(grep -o "| ECE [0-9.]*" "$dir/test.txt" | awk '{print $3}')"
  done
}

# last_valid DIR KEY: KEY's value on the last validation line of DIR/train.log (- if absent)
last_valid() {
  local value
  value=$(grep "valid on 'valid' subset" "$1/train.log" | tail -n 1 | grep -o "| $2 [0-9.e-]*" \
          | awk '{print $3}')
  echo "${value:--}"
}

# run_steps STEP...: the named steps in order (prepare is the recipe's own), all when none named
run_steps() {
  local steps=("$@") step
  (( ${#steps[@]} )) || steps=(prepare train evaluate sweep distill)
  for step in "${steps[@]}"; do
    case $step in
      prepare|train|evaluate|sweep|distill) ;;
      *) echo "$(basename "$0"): error: STEP: must be one of prepare, train, evaluate, sweep, distill, got $step" >&2
         exit 2 ;;
    esac
  done
  for step in "${steps[@]}"; do "step_$step"; done
}
