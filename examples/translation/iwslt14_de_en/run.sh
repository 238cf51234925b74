#!/usr/bin/env bash
# IWSLT'14 German->English on a GPU machine with internet: the paper's translation experiments
# (section 3: calibration, Table 3 / Figs. 3-4; section 4: distillation, Fig. 5) with the stock
# fairseq commands plus `--user-dir ls_plugins`.  Not run by the project's tests (they parse every
# command under DRY_RUN=1: tests/test_recipes_dryrun.py).
#
# Usage: bash examples/translation/iwslt14_de_en/run.sh [WORK [STEP...]]
#   WORK  working directory (default work/iwslt14_de_en); STEP: prepare, train, evaluate, sweep,
#   distill (default: all, in this order; see ../gpu_common.sh for what each does and writes).
#   Run it with the virtual environment's bin/ on PATH (fairseq-*, ls-sweep, ls-cache-teacher).
#
# prepare: fairseq's examples/translation/prepare-iwslt14.sh corpus (its download, its cleaning and
#   its train/valid/test split, lowercased: prepare_iwslt14.py) with a joint 10k sentencepiece
#   vocabulary (BPE) instead of Moses tokenisation + subword-nmt, binarised with
#   fairseq-preprocess --joined-dictionary.  BLEU is sacreBLEU on the decoded, lowercased text.
# train: transformer_iwslt_de_en with the hyper-parameters of fairseq's translation README, once
#   with hard targets and once with label smoothing 0.1 (--criterion smoothed_ce).
#
# Environment: DRY_RUN=1 (print the commands only), IWSLT_URL, VOCAB_SIZE (10000), WORKERS (8),
#   MAX_UPDATE (50000, about 45 epochs), STUDENT_MAX_UPDATE (50000), FP16 (empty; --fp16 on
#   Volta or newer GPUs), ALPHA (0.1), BEAM (4), TEMPERATURES (0.5:2:0.125),
#   DISTILL_TEMPERATURES ("1 2 4"), TOPK (8), CACHE_MAX_TOKENS (16000)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../gpu_common.sh"

WORK=${1:-work/iwslt14_de_en}
(( $# )) && shift
DATA=$WORK/data-bin
IWSLT_URL=${IWSLT_URL:-https://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz}
VOCAB_SIZE=${VOCAB_SIZE:-10000} WORKERS=${WORKERS:-8}
MAX_UPDATE=${MAX_UPDATE:-50000} STUDENT_MAX_UPDATE=${STUDENT_MAX_UPDATE:-50000} FP16=${FP16:-}
ALPHA=${ALPHA:-0.1} BEAM=${BEAM:-4} TEMPERATURES=${TEMPERATURES:-0.5:2:0.125}
DISTILL_TEMPERATURES=${DISTILL_TEMPERATURES:-1 2 4} TOPK=${TOPK:-8}
CACHE_MAX_TOKENS=${CACHE_MAX_TOKENS:-16000}

MODEL=(--arch transformer_iwslt_de_en --share-decoder-input-output-embed
       --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0
       --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 4000
       --dropout 0.3 --weight-decay 0.0001 --max-tokens 4096
       --seed 1 --no-epoch-checkpoints --log-format simple --log-interval 100 $FP16)
STUDENT=(--encoder-layers 3 --decoder-layers 3 --max-update "$STUDENT_MAX_UPDATE")
GENERATE=(--beam "$BEAM" --max-len-a 1.2 --max-len-b 10 --batch-size 128
          --required-batch-size-multiple 1 --remove-bpe sentencepiece)

step_prepare() {
  finished "$DATA/dict.en.txt" && return
  local archive=$WORK/orig/de-en.tgz
  echo "== IWSLT'14 de-en: download, clean, split, sentencepiece, binarise"
  run mkdir -p "$WORK/orig"
  if [[ ! -f $archive ]]; then
    run curl -fL --retry 3 -o "$archive.part" "$IWSLT_URL"
    run mv "$archive.part" "$archive"
  fi
  run tar -xzf "$archive" -C "$WORK/orig"
  run python "$HERE/prepare_iwslt14.py" "$WORK/orig/de-en" "$WORK/text" \
    --vocab-size "$VOCAB_SIZE" --lowercase --workers "$WORKERS"
  run fairseq-preprocess --source-lang de --target-lang en --trainpref "$WORK/text/spm/train" \
    --validpref "$WORK/text/spm/valid" --testpref "$WORK/text/spm/test" --destdir "$DATA" \
    --joined-dictionary --workers "$WORKERS"
}

run_steps "$@"
