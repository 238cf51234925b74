#!/usr/bin/env bash
# Sequence-level knowledge distillation (Kim & Rush 2016) with stock fairseq commands:
#   1. decode the training set with the teacher (fairseq-generate, beam search);
#   2. binarise (source, teacher hypothesis) pairs with the ORIGINAL dictionaries, and link the
#      original valid/test splits so the student is validated on real references;
#   3. train the student on the teacher's translations (any criterion: smoothed_ce, or
#      distillation_ce with the same teacher to combine word- and sequence-level distillation).
#
# usage: scripts/seq_distill.sh TEACHER.pt DATA_BIN OUT_DIR [fairseq-train args for the student...]
#   without student args only steps 1-2 run (OUT_DIR/bin is then ready for any fairseq-train).
# env:  BEAM=5  LENPEN=1.0  MAX_TOKENS=4000 (generation)  MAX_LEN_A=0 MAX_LEN_B=200
#       SUBSET=train (split to decode)  WORKERS=1 (fairseq-preprocess)
# out:  OUT_DIR/gen/generate-$SUBSET.txt  fairseq-generate's output
#       OUT_DIR/text/$SUBSET.{src,tgt}     sources and teacher hypotheses, in example-id order
#       OUT_DIR/bin/                       binarised, same dictionaries as DATA_BIN
#       OUT_DIR/checkpoints/               the student
set -euo pipefail

if [ $# -lt 3 ]; then
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
TEACHER=$1 DATA=$2 OUT=$3
shift 3
BEAM=${BEAM:-5} LENPEN=${LENPEN:-1.0} MAX_TOKENS=${MAX_TOKENS:-4000}
MAX_LEN_A=${MAX_LEN_A:-0} MAX_LEN_B=${MAX_LEN_B:-200} SUBSET=${SUBSET:-train} WORKERS=${WORKERS:-1}
die() { echo "seq_distill.sh: error: $*" >&2; exit 2; }

[ -f "$TEACHER" ] || die "TEACHER: must name an existing checkpoint file, got $TEACHER (no such teacher checkpoint)"
[ -d "$DATA" ] || die "DATA_BIN: must name an existing directory, got $DATA"
{ mkdir -p "$OUT" && [ -w "$OUT" ] && touch "$OUT/.write-probe" && rm -f "$OUT/.write-probe"; } \
    2>/dev/null || die "OUT_DIR: must name a writable directory, got $OUT"
# language pair from the binarised file names: $SUBSET.<src>-<tgt>.<lang>.idx
idx=$(ls "$DATA"/"$SUBSET".*-*.*.idx 2>/dev/null | head -n 1 || true)
[ -n "$idx" ] || die "$DATA has no binarised split '$SUBSET' ($SUBSET.<src>-<tgt>.<lang>.idx)"
pair=$(basename "$idx"); pair=${pair#"$SUBSET".}; pair=${pair%%.*}
SRC=${SRC:-${pair%-*}} TGT=${TGT:-${pair#*-}}
for lang in "$SRC" "$TGT"; do
    [ -f "$DATA/dict.$lang.txt" ] || die "missing $DATA/dict.$lang.txt"
done
# ls_plugins as --user-dir: fairseq checkpoints then load with torch's safe loading
USER_DIR=$(python -c 'import os, ls_plugins; print(os.path.dirname(ls_plugins.__file__))')

mkdir -p "$OUT/gen" "$OUT/text"
echo "== 1. decoding $SUBSET ($SRC->$TGT) with the teacher, beam $BEAM"
fairseq-generate "$DATA" --user-dir "$USER_DIR" --path "$TEACHER" --gen-subset "$SUBSET" \
    --source-lang "$SRC" --target-lang "$TGT" --beam "$BEAM" --lenpen "$LENPEN" \
    --max-tokens "$MAX_TOKENS" --max-len-a "$MAX_LEN_A" --max-len-b "$MAX_LEN_B" \
    --required-batch-size-multiple 1 --skip-invalid-size-inputs-valid-test \
    --results-path "$OUT/gen" > "$OUT/gen/log.txt"
# (--required-batch-size-multiple 1: with fairseq's default of 8 its batching silently drops a
#  few examples of some datasets; 1 keeps every example)
GEN="$OUT/gen/generate-$SUBSET.txt"
# S-<id>\t<source tokens>, H-<id>\t<score>\t<hypothesis tokens>: raw dictionary tokens (no BPE
# removal, no detokenisation), so re-binarising with the same dictionaries is lossless.
grep -P '^S-\d+\t' "$GEN" | sed 's/^S-//' | sort -t$'\t' -k1,1n -s | cut -f2 > "$OUT/text/$SUBSET.$SRC"
grep -P '^H-\d+\t' "$GEN" | sed 's/^H-//' | sort -t$'\t' -k1,1n -s | cut -f3 > "$OUT/text/$SUBSET.$TGT"
n_src=$(wc -l < "$OUT/text/$SUBSET.$SRC") n_hyp=$(wc -l < "$OUT/text/$SUBSET.$TGT")
[ "$n_src" -eq "$n_hyp" ] && [ "$n_src" -gt 0 ] || die "got $n_src sources and $n_hyp hypotheses"
n_all=$(python -c 'import sys; from fairseq.data import data_utils
print(len(data_utils.load_indexed_dataset(sys.argv[1], None)))' "$DATA/$SUBSET.$SRC-$TGT.$SRC" 2>/dev/null)
echo "   $n_hyp teacher translations of $n_all examples in $OUT/text/$SUBSET.$TGT"
if [ "$n_hyp" -ne "$n_all" ]; then
    echo "   warning: $((n_all - n_hyp)) examples were too long for the teacher and are left out" >&2
fi

echo "== 2. binarising with the original dictionaries"
rm -rf "$OUT/bin"
fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" --trainpref "$OUT/text/$SUBSET" \
    --srcdict "$DATA/dict.$SRC.txt" --tgtdict "$DATA/dict.$TGT.txt" --destdir "$OUT/bin" \
    --workers "$WORKERS" > "$OUT/bin.log"
for f in "$DATA"/*.idx "$DATA"/*.bin; do  # the student trains on "train"; real valid/test
    name=$(basename "$f")
    case "$name" in train.*) continue ;; esac
    ln -sf "$(cd "$(dirname "$f")" && pwd)/$name" "$OUT/bin/$name"
done

if [ $# -eq 0 ]; then
    echo "== done: train a student on $OUT/bin"
    exit 0
fi
echo "== 3. training the student on the teacher's translations"
fairseq-train "$OUT/bin" --user-dir "$USER_DIR" --save-dir "$OUT/checkpoints" "$@"
