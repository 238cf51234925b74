# Shared by demo.sh and sweep.sh (source it from the repository root): the offline es->en Bible
# corpus and the two transformers of paper section 3, trained with the stock fairseq-train and
# `--criterion smoothed_ce`: hard targets (alpha = 0) and label smoothing (alpha = 0.1).
# Knobs (environment): TRAIN_SIZE (default all: the ~11,300 pairs of verses with at most 40
# words a side left after the held-out sets), EVAL_SIZE (500 valid and 500 test pairs),
# VOCAB_SIZE (4000 joint sentencepiece pieces), MAX_EPOCH (6), CPU (--cpu; empty to use a GPU).
# Finished steps are skipped when a recipe is re-run with the same WORK directory; an interrupted
# training run is resumed (see train_once).
TRAIN_SIZE=${TRAIN_SIZE:-all}
EVAL_SIZE=${EVAL_SIZE:-500}
VOCAB_SIZE=${VOCAB_SIZE:-4000}
MAX_EPOCH=${MAX_EPOCH:-6}
CPU=${CPU---cpu}

# prepare_corpus WORK: WORK/corpus/{raw,spm,bin}
prepare_corpus() {
  if [ ! -f "$1/corpus/bin/dict.en.txt" ]; then
    echo "== preparing the es->en Bible corpus ($TRAIN_SIZE training pairs)"
    local size=()
    [ "$TRAIN_SIZE" = all ] || size=(--train-size "$TRAIN_SIZE")
    python scripts/prepare_bible.py "$1/corpus" "${size[@]}" \
      --valid-size "$EVAL_SIZE" --test-size "$EVAL_SIZE" --vocab-size "$VOCAB_SIZE" --binarize
  fi
}

# train_once DIR FAIRSEQ_TRAIN_ARGS...: fairseq-train FAIRSEQ_TRAIN_ARGS --save-dir DIR, appending
# its output to DIR/train.log and echoing the validation lines, unless DIR/.done says that a
# previous run finished. The stamp is written only when fairseq-train exits with 0: a run that was
# interrupted (Ctrl-C, a crash, a full disk) already has checkpoint_best.pt after its first epoch,
# so the checkpoints prove nothing; it is run again and fairseq-train resumes it from
# DIR/checkpoint_last.pt. A failure stops the recipe.
train_once() {
  local dir=$1; shift
  if [ -f "$dir/.done" ]; then
    echo "== $dir: finished already"
    return 0
  fi
  mkdir -p "$dir"
  [ ! -f "$dir/checkpoint_last.pt" ] || echo "== $dir: resuming from checkpoint_last.pt"
  if fairseq-train "$@" --save-dir "$dir" 2>&1 | tee -a "$dir/train.log" \
      | { grep -E "valid on|done training" || true; }; then
    touch "$dir/.done"
  else
    tail -n 5 "$dir/train.log" >&2
    echo "training $dir failed: see $dir/train.log" >&2
    exit 1
  fi
}

# train_hard_and_ls WORK: WORK/hard and WORK/ls, each with checkpoint_best.pt and train.log
train_hard_and_ls() {
  local model=(--task translation --arch transformer --share-all-embeddings
    --encoder-layers 3 --decoder-layers 3 --encoder-embed-dim 256 --decoder-embed-dim 256
    --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
    --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.2
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr 0.002 --lr-scheduler inverse_sqrt
    --warmup-updates 400 --max-tokens 6000 --max-epoch "$MAX_EPOCH" $CPU --seed 1
    --no-epoch-checkpoints --log-format simple --log-interval 50)
  local run name alpha
  for run in hard:0.0 ls:0.1; do
    name=${run%%:*}; alpha=${run##*:}
    echo "== training '$name' with --criterion smoothed_ce --label-smoothing $alpha"
    train_once "$1/$name" "$1/corpus/bin" --user-dir ls_plugins "${model[@]}" \
      --criterion smoothed_ce --label-smoothing "$alpha" --report-accuracy
  done
}
