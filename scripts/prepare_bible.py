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

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ls_plugins import cli  # noqa: E402

VERSE = re.compile(r"^(?P<key>\S.*? \d+:\d+): ?(?P<text>.*)$")
STRONGS = re.compile(r"<[GH]\d+>")
FULL_RANGE = "Genesis 1:1-Revelation 22:21"


def read_module(option: str, module: str) -> dict[str, str]:
    """Verse key -> text for one SWORD module, via ``diatheke``."""
    try:
        out = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", FULL_RANGE],
                             check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        cli.exit_with_error(f"{option}: reading SWORD modules needs the diatheke command: install "
                            f"the Debian packages diatheke sword-text-sparv sword-text-web (or run "
                            f"`make system-deps`)")
    except subprocess.CalledProcessError as err:
        cli.exit_with_error(f"{option}: diatheke failed on module {module!r}: "
                            f"{(err.stderr or '').strip() or f'exit status {err.returncode}'}")
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
        cli.exit_with_error(str(cli.bad_value(option, "must name an installed SWORD Bible module",
                                              f"{module!r} (diatheke returned no verses)")))
    return {k: " ".join(STRONGS.sub("", " ".join(v)).split()) for k, v in verses.items()}


def language_code(option: str):
    """argparse type: a language suffix fairseq can put in file names (``train.es-en.es``)."""
    def check(text: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_]+", text):
            raise cli.bad_value(option, "must be a non-empty code of letters, digits or _", repr(text))
        return text
    return cli.checked(option, check)


def write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog="prepare_bible.py", description=__doc__.split("\n\n")[0])
    at_least_1 = {name: cli.int_at_least(name, 1) for name in
                  ("--train-size", "--valid-size", "--test-size", "--max-words", "--workers")}
    parser.add_argument("out", help="output directory (created; replaced atomically)")
    parser.add_argument("--src-module", default="spaRV1909eb", help="SWORD module of the source side")
    parser.add_argument("--tgt-module", default="engWEB2015eb", help="SWORD module of the target side")
    parser.add_argument("--src-lang", default="es", type=language_code("--src-lang"))
    parser.add_argument("--tgt-lang", default="en", type=language_code("--tgt-lang"))
    parser.add_argument("--train-size", type=at_least_1["--train-size"], default=None,
                        help="keep this many training pairs (default: all remaining)")
    parser.add_argument("--valid-size", type=at_least_1["--valid-size"], default=500)
    parser.add_argument("--test-size", type=at_least_1["--test-size"], default=500)
    parser.add_argument("--max-words", type=at_least_1["--max-words"], default=40,
                        help="drop pairs with a side longer than this many words")
    parser.add_argument("--vocab-size", type=cli.int_at_least("--vocab-size", 2), default=8000,
                        help="sentencepiece vocabulary (at least the number of distinct characters "
                             "of the training text, plus 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--binarize", action="store_true", help="also run fairseq-preprocess")
    parser.add_argument("--workers", type=at_least_1["--workers"], default=2)
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.src_lang == args.tgt_lang:
        parser.error(f"--tgt-lang: must differ from --src-lang, got {args.tgt_lang!r} for both")
    with cli.exit_on_usage_error():
        cli.check_output_dir("OUT", args.out)

    src = read_module("--src-module", args.src_module)
    tgt = read_module("--tgt-module", args.tgt_module)
    pairs = [(src[k], tgt[k]) for k in src if k in tgt and src[k] and tgt[k]
             and len(src[k].split()) <= args.max_words and len(tgt[k].split()) <= args.max_words]
    random.Random(args.seed).shuffle(pairs)
    n_held = args.valid_size + args.test_size
    if len(pairs) <= n_held:
        parser.error(f"--valid-size: --valid-size + --test-size must be below the {len(pairs)} "
                     f"aligned pairs (with at most --max-words {args.max_words} words a side), "
                     f"got {args.valid_size} + {args.test_size}")
    splits = {"valid": pairs[:args.valid_size], "test": pairs[args.valid_size:n_held],
              "train": pairs[n_held:n_held + args.train_size] if args.train_size else pairs[n_held:]}
    if args.train_size and len(splits["train"]) < args.train_size:
        print(f"note: --train-size {args.train_size}: only {len(splits['train'])} pairs remain with "
              f"at most --max-words {args.max_words} words a side; using all of them")

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
        if os.path.exists(work):
            shutil.rmtree(work)
    sizes = ", ".join(f"{name} {len(rows)}" for name, rows in splits.items())
    print(f"prepared {args.src_lang}->{args.tgt_lang} Bible corpus in {out}: {sizes}")


def train_sentencepiece(train_files: list[str], model_prefix: str, args) -> None:
    """A joint unigram model; a vocabulary too small for the text's characters is a UsageError."""
    import sentencepiece as spm

    try:
        spm.SentencePieceTrainer.train(
            input=",".join(train_files), model_prefix=model_prefix, vocab_size=args.vocab_size,
            model_type="unigram", character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0,
            pad_id=-1, hard_vocab_limit=False, num_threads=args.workers, minloglevel=2)
    except RuntimeError as err:
        # "... Vocabulary size is smaller than required_chars. 1 vs 84. ..."
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(err))
        if needed:
            raise cli.bad_value("--vocab-size", f"must be at least {needed.group(1)} for this "
                                "corpus (its distinct characters and <unk>)", args.vocab_size) from None
        raise cli.UsageError(f"--vocab-size: sentencepiece failed: {cli.first_line(err)}") from None


def build(work: str, splits: dict, args) -> None:
    import sentencepiece as spm

    raw, pieces = os.path.join(work, "raw"), os.path.join(work, "spm")
    os.makedirs(raw)
    os.makedirs(pieces)
    for name, rows in splits.items():
        write_lines(os.path.join(raw, f"{name}.{args.src_lang}"), [s for s, _ in rows])
        write_lines(os.path.join(raw, f"{name}.{args.tgt_lang}"), [t for _, t in rows])
    train_files = [os.path.join(raw, f"train.{lang}") for lang in (args.src_lang, args.tgt_lang)]
    train_sentencepiece(train_files, os.path.join(work, "spm"), args)
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
        result = subprocess.run(
            [preprocess, "--source-lang", args.src_lang, "--target-lang", args.tgt_lang,
             "--trainpref", prefix + "train", "--validpref", prefix + "valid", "--testpref",
             prefix + "test", "--destdir", os.path.join(work, "bin"), "--joined-dictionary",
             "--workers", str(args.workers)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise cli.UsageError(f"--binarize: fairseq-preprocess failed (exit status "
                                 f"{result.returncode}): {lines[-1] if lines else 'no message'}")


if __name__ == "__main__":
    main()
