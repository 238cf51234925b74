#!/usr/bin/env python3
"""Build a small real es->en parallel corpus from Debian's SWORD Bibles, offline.

Reads the Reina-Valera 1909 (``spaRV1909eb``, package sword-text-sparv) and the World English
Bible (``engWEB2015eb``, package sword-text-web) with ``diatheke``, aligns them by verse key,
splits train/valid/test with a fixed seed, trains a joint sentencepiece model on the training
side and (with ``--binarize``) runs ``fairseq-preprocess``.

Output directory::

    raw/{train,valid,test}.{es,en}     plain text (detokenised references for sacrebleu)
    spm.model, spm.vocab               joint sentencepiece model
    spm/{train,valid,test}.{es,en}     sentencepiece pieces
    bin/                               fairseq binarised data (--binarize), joined dictionary
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

VERSE = re.compile(r"^(?P<key>\S.*? \d+:\d+): ?(?P<text>.*)$")
STRONGS = re.compile(r"<[GH]\d+>")
FULL_RANGE = "Genesis 1:1-Revelation 22:21"


def read_module(module: str) -> dict[str, str]:
    """Verse key -> text for one SWORD module, via ``diatheke``."""
    try:
        out = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", FULL_RANGE],
                             check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        sys.exit("error: diatheke not found: install the Debian packages diatheke sword-text-sparv "
                 "sword-text-web (or run `make system-deps`)")
    verses: dict[str, list[str]] = {}
    key = None
    for line in out.splitlines():
        if line.strip() == f"({module})":
            break
        match = VERSE.match(line)
        if match:
            key = match["key"]
            verses[key] = [match["text"]]
        elif key is not None and line.strip():
            verses[key].append(line)
    if not verses:
        sys.exit(f"error: --src-module/--tgt-module: diatheke returned no verses for module {module!r}")
    return {k: " ".join(STRONGS.sub("", " ".join(v)).split()) for k, v in verses.items()}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output directory (created; replaced atomically)")
    parser.add_argument("--src-module", default="spaRV1909eb", help="SWORD module of the source side")
    parser.add_argument("--tgt-module", default="engWEB2015eb", help="SWORD module of the target side")
    parser.add_argument("--src-lang", default="es")
    parser.add_argument("--tgt-lang", default="en")
    parser.add_argument("--train-size", type=positive_int, default=None,
                        help="keep this many training pairs (default: all remaining)")
    parser.add_argument("--valid-size", type=positive_int, default=500)
    parser.add_argument("--test-size", type=positive_int, default=500)
    parser.add_argument("--max-words", type=positive_int, default=40,
                        help="drop pairs with a side longer than this many words")
    parser.add_argument("--vocab-size", type=positive_int, default=8000, help="sentencepiece vocabulary")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--binarize", action="store_true", help="also run fairseq-preprocess")
    parser.add_argument("--workers", type=positive_int, default=2)
    args = parser.parse_args(argv)

    src, tgt = read_module(args.src_module), read_module(args.tgt_module)
    pairs = [(src[k], tgt[k]) for k in src if k in tgt and src[k] and tgt[k]
             and len(src[k].split()) <= args.max_words and len(tgt[k].split()) <= args.max_words]
    random.Random(args.seed).shuffle(pairs)
    n_held = args.valid_size + args.test_size
    if len(pairs) <= n_held:
        parser.error(f"--valid-size + --test-size must be below the {len(pairs)} aligned pairs")
    splits = {"valid": pairs[:args.valid_size], "test": pairs[args.valid_size:n_held],
              "train": pairs[n_held:n_held + args.train_size] if args.train_size else pairs[n_held:]}
    if args.train_size and len(splits["train"]) < args.train_size:
        print(f"note: --train-size {args.train_size}: only {len(splits['train'])} pairs remain with "
              f"at most --max-words {args.max_words} words a side; using all of them")

    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(out))
    try:
        build(work, splits, args)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        if os.path.exists(work):
            shutil.rmtree(work)
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in splits.items())
    print(f"prepared {args.src_lang}->{args.tgt_lang} Bible corpus in {out}: {sizes}")


def build(work: str, splits: dict, args) -> None:
    import sentencepiece as spm

    raw, pieces = os.path.join(work, "raw"), os.path.join(work, "spm")
    os.makedirs(raw)
    os.makedirs(pieces)
    for name, rows in splits.items():
        write_lines(os.path.join(raw, f"{name}.{args.src_lang}"), [s for s, _ in rows])
        write_lines(os.path.join(raw, f"{name}.{args.tgt_lang}"), [t for _, t in rows])
    train_files = [os.path.join(raw, f"train.{lang}") for lang in (args.src_lang, args.tgt_lang)]
    spm.SentencePieceTrainer.train(
        input=",".join(train_files), model_prefix=os.path.join(work, "spm"),
        vocab_size=args.vocab_size, model_type="unigram", character_coverage=1.0,
        bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, hard_vocab_limit=False,
        num_threads=args.workers, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(work, "spm.model"))
    for name in splits:
        for lang in (args.src_lang, args.tgt_lang):
            with open(os.path.join(raw, f"{name}.{lang}"), encoding="utf-8") as f:
                lines = [" ".join(sp.encode(line.rstrip("\n"), out_type=str)) for line in f]
            write_lines(os.path.join(pieces, f"{name}.{lang}"), lines)
    if args.binarize:
        prefix = os.path.join(pieces, "")
        preprocess = shutil.which("fairseq-preprocess") or os.path.join(os.path.dirname(sys.executable),
                                                                        "fairseq-preprocess")
        subprocess.run([preprocess, "--source-lang", args.src_lang, "--target-lang",
                        args.tgt_lang, "--trainpref", prefix + "train", "--validpref",
                        prefix + "valid", "--testpref", prefix + "test", "--destdir",
                        os.path.join(work, "bin"), "--joined-dictionary", "--workers",
                        str(args.workers)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
