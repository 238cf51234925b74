#!/usr/bin/env python3
"""Prepare IWSLT'14 de-en text as fairseq's prepare-iwslt14.sh does, with a joint sentencepiece
vocabulary instead of Moses tokenisation and subword-nmt BPE.

    python prepare_iwslt14.py ORIG/de-en OUT --vocab-size 10000 --lowercase

ORIG/de-en is the extracted ``de-en.tgz`` (``train.tags.de-en.{de,en}`` and the
``IWSLT14.TED*.de-en.{de,en}.xml`` files).  The same corpus as fairseq's script:

* train: the TED transcripts without their ``<url>``, ``<talkid>`` and ``<keywords>`` lines and
  with the ``<title>``/``<description>`` tags removed (their text kept); pairs with a side of 0
  or more than 175 tokens, or a length ratio above 1.5, dropped (clean-corpus-n.perl's rule,
  counted on ``\\w+|[^\\w\\s]`` tokens, which approximate the Moses tokens it counts);
* valid: every 23rd remaining pair (the rest is train);
* test: dev2010, dev2012 (TEDX), tst2010, tst2011 and tst2012 concatenated, ``’`` -> ``'``;
* ``--lowercase``: everything lowercased (fairseq's recipe does).

Output directory::

    raw/{train,valid,test}.{de,en}   plain text (the references BLEU is computed against)
    spm.model, spm.vocab             joint sentencepiece model trained on raw/train.{de,en}
    spm/{train,valid,test}.{de,en}   sentencepiece pieces, for fairseq-preprocess --joined-dictionary
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
from ls_plugins import cli  # noqa: E402

LANGS = ("de", "en")
DROPPED_TAGS = ("<url>", "<talkid>", "<keywords>")
REMOVED_TAGS = re.compile(r"</?(title|description)>")
SEGMENT = re.compile(r'^\s*<seg id="\d+">\s*(?P<text>.*?)\s*</seg>\s*$')
TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
             "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")
TOKEN = re.compile(r"\w+|[^\w\s]")
MAX_TOKENS, MAX_RATIO, VALID_EVERY = 175, 1.5, 23


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="prepare_iwslt14.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("orig", help="the extracted de-en.tgz: ORIG/de-en")
    parser.add_argument("out", help="output directory (built beside it, then renamed into place)")
    parser.add_argument("--vocab-size", type=cli.int_at_least("--vocab-size", 2), default=10000,
                        help="joint sentencepiece vocabulary (default 10000, as the 10k BPE "
                             "merges of fairseq's recipe)")
    parser.add_argument("--model-type", type=cli.one_of("--model-type", ("bpe", "unigram")),
                        default="bpe", help="sentencepiece model (default bpe)")
    parser.add_argument("--lowercase", action="store_true",
                        help="lowercase everything (as fairseq's prepare-iwslt14.sh)")
    parser.add_argument("--workers", type=cli.int_at_least("--workers", 1), default=8,
                        help="sentencepiece training threads")
    return parser


def read_lines(path: str) -> list[str]:
    with open(cli.check_input_file("ORIG", path), encoding="utf-8") as f:
        return f.read().splitlines()


def transcript_lines(path: str) -> list[str]:
    """A ``train.tags`` file without its metadata lines (fairseq's grep -v / sed)."""
    return [REMOVED_TAGS.sub("", line) for line in read_lines(path)
            if not any(tag in line for tag in DROPPED_TAGS)]


def segments(path: str) -> list[str]:
    """The ``<seg id="N">...</seg>`` texts of an IWSLT xml file, ``’`` turned into ``'``."""
    return [match["text"].replace("\u2019", "'") for match in map(SEGMENT.match, read_lines(path))
            if match]


def keep_pair(source: str, target: str) -> bool:
    """clean-corpus-n.perl -ratio 1.5 ... 1 175 on approximate Moses tokens."""
    n_source, n_target = len(TOKEN.findall(source)), len(TOKEN.findall(target))
    return (1 <= n_source <= MAX_TOKENS and 1 <= n_target <= MAX_TOKENS
            and n_source <= MAX_RATIO * n_target and n_target <= MAX_RATIO * n_source)


def paired(option: str, sides: dict[str, list[str]], where: str) -> list[tuple[str, str]]:
    de, en = sides["de"], sides["en"]
    if len(de) != len(en):
        raise cli.bad_value(option, "must hold as many German as English lines",
                            f"{len(de)} and {len(en)} in {where}")
    return list(zip(de, en))


def read_corpus(orig: str, lowercase: bool) -> dict[str, list[tuple[str, str]]]:
    """``{"train": pairs, "valid": pairs, "test": pairs}`` as fairseq's recipe splits them."""
    train_path = os.path.join(orig, "train.tags.de-en.{}")
    pairs = paired("ORIG", {lang: transcript_lines(train_path.format(lang)) for lang in LANGS},
                   train_path.format("{de,en}"))
    pairs = [(" ".join(de.split()), " ".join(en.split())) for de, en in pairs]
    pairs = [pair for pair in pairs if keep_pair(*pair)]
    test = []
    for name in TEST_SETS:
        xml = os.path.join(orig, f"{name}.de-en.{{}}.xml")
        test += paired("ORIG", {lang: segments(xml.format(lang)) for lang in LANGS},
                       xml.format("{de,en}"))
    splits = {"train": [p for i, p in enumerate(pairs, 1) if i % VALID_EVERY != 0],
              "valid": [p for i, p in enumerate(pairs, 1) if i % VALID_EVERY == 0],
              "test": test}
    if lowercase:
        splits = {name: [(de.lower(), en.lower()) for de, en in rows] for name, rows in splits.items()}
    return splits


def write_lines(path: str, lines) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def build(work: str, splits: dict[str, list[tuple[str, str]]], args) -> None:
    """raw/, a joint sentencepiece model and spm/ in ``work``."""
    import sentencepiece as spm

    for sub in ("raw", "spm"):
        os.makedirs(os.path.join(work, sub))
    for name, rows in splits.items():
        for side, lang in enumerate(LANGS):
            write_lines(os.path.join(work, "raw", f"{name}.{lang}"), (row[side] for row in rows))
    try:
        spm.SentencePieceTrainer.train(
            input=",".join(os.path.join(work, "raw", f"train.{lang}") for lang in LANGS),
            model_prefix=os.path.join(work, "spm"), vocab_size=args.vocab_size,
            model_type=args.model_type, character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
            pad_id=-1, num_threads=args.workers, minloglevel=2)
    except RuntimeError as err:
        raise cli.bad_value("--vocab-size", "sentencepiece must be able to train this vocabulary",
                            f"{args.vocab_size} ({cli.first_line(err)})") from None
    pieces = spm.SentencePieceProcessor(model_file=os.path.join(work, "spm.model"))
    for name, rows in splits.items():
        for side, lang in enumerate(LANGS):
            encoded = pieces.encode([row[side] for row in rows], out_type=str)
            write_lines(os.path.join(work, "spm", f"{name}.{lang}"), map(" ".join, encoded))


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    with cli.exit_on_usage_error():
        cli.check_input_dir("ORIG", args.orig)
        cli.check_output_dir("OUT", args.out)
        splits = read_corpus(args.orig, args.lowercase)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(out))
    try:
        with cli.exit_on_usage_error():
            build(work, splits, args)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"prepared IWSLT'14 de-en in {out}: "
          + ", ".join(f"{name} {len(rows)}" for name, rows in splits.items()))


if __name__ == "__main__":
    main()
