#!/usr/bin/env bash
# WMT'16 English->German (the WMT'14 training data with newstest2013/2014, as Google prepared it
# for Vaswani et al. 2017) on a GPU machine with internet: the paper's section 3 setup (a
# Transformer base on EN-DE: calibration, Table 3 / Figs. 3-4) and section 4's distillation
# (Fig. 5), with the stock fairseq commands plus `--user-dir ls_plugins`.  Not run by the
# project's tests (they parse every command under DRY_RUN=1: tests/test_recipes_dryrun.py).
#
# Usage: bash examples/translation/wmt16_en_de/run.sh [WORK [STEP...]]
#   WORK  working directory (default work/wmt16_en_de); STEP: prepare, train, evaluate, sweep,
#   distill (default: all, in this order; see ../gpu_common.sh for what each does and writes).
#   Run it with the virtual environment's bin/ on PATH (fairseq-*, ls-sweep, ls-cache-teacher).
#
# prepare: fairseq's examples/scaling_nmt recipe: Google's preprocessed wmt16_en_de.tar.gz
#   (tokenised, 32k joint BPE) binarised with fairseq-preprocess --joined-dictionary
#   --nwordssrc 32768 --nwordstgt 32768.  Google Drive may answer the download with a page
#   instead of the archive: then fetch it by hand (fairseq's link:
#   https://drive.google.com/uc?export=download&id=0B_bZck-ksdkpM25jRUN2X2UxMm8, or
#   `gdown 0B_bZck-ksdkpM25jRUN2X2UxMm8`) into WORK/orig/wmt16_en_de.tar.gz and re-run.
#   WMT_TEXT=DIR instead binarises the output of fairseq's prepare-wmt14en2de.sh
#   (DIR/{train,valid,test}.{en,de}, 40k BPE; no download).
# train: fairseq's scaling_nmt settings (adam (0.9, 0.98), lr 5e-4, inverse_sqrt with 4000 warm-up
#   updates from 1e-7, --max-tokens 3584, --fp16, shared embeddings) on the Transformer base
#   (ARCH=transformer_wmt_en_de, dropout 0.1 as in Vaswani et al.; ARCH=
#   transformer_vaswani_wmt_en_de_big DROPOUT=0.3 for fairseq's big model), --update-freq 8 so
#   that one GPU sees the batch of fairseq's 8-GPU run (set UPDATE_FREQ=1 on 8 GPUs).
# BLEU: the references are tokenised (Moses, with ##AT##-##AT## around split hyphens), so BLEU is
#   computed on the tokens (--sacrebleu-tokenizer none): the classic tokenised BLEU of Vaswani et
#   al. and the paper, not sacreBLEU's detokenised score.
# The distill step caches each teacher's top-8 over the 4.5M training pairs: on the order of
#   10 GB of disk per teacher (72 bytes per target token).
#
# Environment: DRY_RUN=1 (print the commands only), WMT16_URL, WMT_TEXT, WORKERS (16), ARCH,
#   DROPOUT, LR (0.0005), MAX_TOKENS (3584), UPDATE_FREQ (8), MAX_UPDATE (100000),
#   STUDENT_MAX_UPDATE (100000), FP16 (--fp16; empty for GPUs before Volta), ALPHA (0.1), BEAM (4),
#   LENPEN (0.6), TEMPERATURES (0.5:2:0.125), DISTILL_TEMPERATURES ("1 2 4"), TOPK (8),
#   CACHE_MAX_TOKENS (16000)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../gpu_common.sh"

WORK=${1:-work/wmt16_en_de}
(( $# )) && shift
DATA=$WORK/data-bin
WMT16_URL=${WMT16_URL:-https://drive.google.com/uc?export=download&id=0B_bZck-ksdkpM25jRUN2X2UxMm8&confirm=t}
WMT_TEXT=${WMT_TEXT:-} WORKERS=${WORKERS:-16}
ARCH=${ARCH:-transformer_wmt_en_de} DROPOUT=${DROPOUT:-0.1} LR=${LR:-0.0005}
MAX_TOKENS=${MAX_TOKENS:-3584} UPDATE_FREQ=${UPDATE_FREQ:-8} MAX_UPDATE=${MAX_UPDATE:-100000}
STUDENT_MAX_UPDATE=${STUDENT_MAX_UPDATE:-100000} FP16=${FP16---fp16}
ALPHA=${ALPHA:-0.1} BEAM=${BEAM:-4} LENPEN=${LENPEN:-0.6} TEMPERATURES=${TEMPERATURES:-0.5:2:0.125}
DISTILL_TEMPERATURES=${DISTILL_TEMPERATURES:-1 2 4} TOPK=${TOPK:-8}
CACHE_MAX_TOKENS=${CACHE_MAX_TOKENS:-16000}

MODEL=(--arch "$ARCH" --share-all-embeddings
       --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0
       --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07
       --dropout "$DROPOUT" --weight-decay 0.0 --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ"
       --seed 1 --no-epoch-checkpoints --log-format simple --log-interval 100 $FP16)
STUDENT=(--encoder-layers 3 --decoder-layers 3 --max-update "$STUDENT_MAX_UPDATE")
GENERATE=(--beam "$BEAM" --lenpen "$LENPEN" --batch-size 128 --required-batch-size-multiple 1
          --remove-bpe subword_nmt --sacrebleu-tokenizer none)

step_prepare() {
  finished "$DATA/dict.en.txt" && return
  local text=$WORK/text archive=$WORK/orig/wmt16_en_de.tar.gz prefixes sizes=()
  if [[ -n $WMT_TEXT ]]; then
    echo "== WMT en-de from prepare-wmt14en2de.sh's output in $WMT_TEXT: binarise"
    prefixes=("$WMT_TEXT/train" "$WMT_TEXT/valid" "$WMT_TEXT/test")
  else
    echo "== WMT'16 en-de (Google's preprocessed release): download, binarise"
    run mkdir -p "$WORK/orig" "$text"
    if [[ ! -f $archive ]]; then
      run curl -fL --retry 3 -o "$archive.part" "$WMT16_URL"
      if ! dry && ! gzip -t "$archive.part" 2> /dev/null; then
        echo "error: $WMT16_URL did not give the gzip archive (Google Drive sometimes answers with" \
             "a web page): download wmt16_en_de.tar.gz by hand into $archive and re-run" >&2
        exit 1
      fi
      run mv "$archive.part" "$archive"
    fi
    run tar -xzf "$archive" -C "$text"
    prefixes=("$text/train.tok.clean.bpe.32000" "$text/newstest2013.tok.bpe.32000"
              "$text/newstest2014.tok.bpe.32000")
    sizes=(--nwordssrc 32768 --nwordstgt 32768)
  fi
  run fairseq-preprocess --source-lang en --target-lang de --trainpref "${prefixes[0]}" \
    --validpref "${prefixes[1]}" --testpref "${prefixes[2]}" --destdir "$DATA" \
    --joined-dictionary "${sizes[@]}" --workers "$WORKERS"
}

run_steps "$@"
