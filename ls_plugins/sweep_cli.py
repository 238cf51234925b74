"""``ls-sweep``: BLEU, NLL and ECE of beam search over softmax temperatures (paper Fig. 4).

The command line and its outputs; the work is :mod:`ls_plugins.sweep` (see there for what is
computed).  For every labelled model (``--model LABEL=PATH``, a checkpoint or an ensemble
``a.pt:b.pt``) and every temperature ``T`` (``--temperatures``, ``--temperature-range``):
sacreBLEU of beam search at ``T`` (exactly ``fairseq-generate --temperature T``'s with
``--temperature-batch 1``), the NLL, ECE, MCE, Brier score, confidence and accuracy of the
next-token predictions given the reference prefix (reference reading) and of the generated
tokens (hypothesis reading), with bootstrap intervals over sentences; per model the ``T``
minimising ECE (both readings) and NLL and maximising BLEU.

Writes to ``--output-dir``: ``points.jsonl`` (one line per finished (model, T) point, appended and
fsync'd: an interrupted sweep re-run with the same directory and options skips finished points;
points computed with other options are recomputed, never mixed in), then ``sweep.json``,
``sweep.csv`` and ``sweep.png`` (Fig. 4), each written atomically; the table goes to stdout.
Bad input ends in one line ``ls-sweep: error: <option>: ...`` (exit code 2) before anything is
written.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from typing import Optional, Sequence

from . import atomic, cli
from .sweep import RESUME_FILE, ModelSpec

# torch, fairseq, sacrebleu and matplotlib are imported where used: --help and bad command lines
# answer at once.
OUTPUTS = ("sweep.json", "sweep.csv", "sweep.png")


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="ls-sweep",
        description="Temperature sweep of beam search (Mueller et al. 2019, Fig. 4): BLEU, "
                    "token-level NLL and ECE given the reference prefix, for each model and T.")
    parser.add_argument("data", help="fairseq data directory (fairseq-preprocess output)")
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                        help="a labelled checkpoint, e.g. hard=hard/checkpoint_best.pt; PATH may "
                             "be an ensemble a.pt:b.pt; repeat for several models (the first is "
                             "drawn without markers, the others with markers)")
    parser.add_argument("--model-data", action="append", default=[], metavar="LABEL=DIR",
                        help="the directory with model LABEL's dictionaries, when the data "
                             "directory its checkpoint records is not found here")
    parser.add_argument("--temperatures", metavar="LIST",
                        help="comma-separated temperatures, e.g. 0.5,0.75,1,1.5")
    parser.add_argument("--temperature-range", metavar="START:STOP:STEP",
                        help="temperatures START, START+STEP, ... up to STOP inclusive, e.g. "
                             "0.5:2:0.25 (combined with --temperatures)")
    parser.add_argument("--output-dir", required=True,
                        help="where points.jsonl (resume file), sweep.json, sweep.csv and "
                             "sweep.png are written; re-run with the same directory to resume")
    parser.add_argument("-s", "--source-lang", help="source language (inferred from DATA if unset)")
    parser.add_argument("-t", "--target-lang", help="target language (inferred from DATA if unset)")
    parser.add_argument("--gen-subset", default="test", help="subset to translate and score")

    gen = parser.add_argument_group("beam search (as fairseq-generate)")
    gen.add_argument("--beam", type=cli.int_at_least("--beam", 1), default=5, help="beam size")
    gen.add_argument("--lenpen", type=cli.finite_float("--lenpen"), default=1.0,
                     help="length penalty: <1.0 favours shorter, >1.0 longer sentences")
    gen.add_argument("--unkpen", type=cli.finite_float("--unkpen"), default=0.0,
                     help="unknown word penalty: <0 produces more unks, >0 fewer")
    gen.add_argument("--min-len", type=cli.int_at_least("--min-len", 1), default=1,
                     help="minimum generation length")
    gen.add_argument("--max-len-a", type=cli.finite_float("--max-len-a"), default=0.0,
                     help="generate sequences of maximum length ax + b, x the source length")
    gen.add_argument("--max-len-b", type=cli.int_at_least("--max-len-b", 1), default=200,
                     help="generate sequences of maximum length ax + b, x the source length")
    gen.add_argument("--no-repeat-ngram-size", type=cli.int_at_least("--no-repeat-ngram-size", 0),
                     default=0, help="ngram blocking such that this size ngram cannot be repeated")
    gen.add_argument("--temperature-batch", type=cli.int_at_least("--temperature-batch", 1),
                     default=1, metavar="K",
                     help="beam-search K temperatures together (the batch repeated K times; memory "
                          "grows K-fold); 1 reproduces fairseq-generate --temperature T exactly")

    data = parser.add_argument_group("batching (as fairseq-generate)")
    data.add_argument("--max-tokens", type=cli.int_at_least("--max-tokens", 1),
                      help="maximum number of tokens in a batch (12000 if neither this nor "
                           "--batch-size is set)")
    data.add_argument("--batch-size", type=cli.int_at_least("--batch-size", 1),
                      help="maximum number of sentences in a batch")
    data.add_argument("--required-batch-size-multiple", default=8,
                      type=cli.int_at_least("--required-batch-size-multiple", 1),
                      help="batch sizes are a multiple of this (as fairseq-generate; the last "
                           "batch, which fairseq drops when it is smaller, is kept: every "
                           "sentence is scored)")
    data.add_argument("--skip-invalid-size-inputs-valid-test", action="store_true",
                      help="skip sentences longer than the models accept")

    score = parser.add_argument_group("scoring")
    score.add_argument("--remove-bpe", nargs="?", const="@@ ", default=None, metavar="BPE",
                       help="remove BPE before scoring, e.g. --remove-bpe sentencepiece (bare "
                            "--remove-bpe removes '@@ ')")
    score.add_argument("--sacrebleu-tokenizer", default="13a",
                       help="sacreBLEU tokenizer (13a, intl, zh, ja-mecab, char, none, ...)")
    score.add_argument("--sacrebleu-lowercase", action="store_true", help="lowercase for BLEU")
    score.add_argument("--calibration-bins", type=cli.int_at_least("--calibration-bins", 1),
                       default=15, help="equal-width confidence bins of the ECE")
    score.add_argument("--calibration-bootstrap", default=200,
                       type=cli.int_at_least("--calibration-bootstrap", 0),
                       help="bootstrap replicates over sentences for the 95%% intervals (0: none)")
    score.add_argument("--calibration-seed", default=0,
                       type=cli.int_at_least("--calibration-seed", 0),
                       help="seed of the bootstrap weights (as fairseq-generate's: same seed and "
                            "sentences, the same replicates)")

    run = parser.add_argument_group("running")
    run.add_argument("--cpu", action="store_true", help="use the CPU even if CUDA is available")
    run.add_argument("--seed", type=cli.int_at_least("--seed", 0), default=1,
                     help="random seed (as fairseq-generate)")
    run.add_argument("--no-progress-bar", action="store_true", help="no progress bar on stderr")
    return parser


# -- command-line values ------------------------------------------------------------------------

def parse_temperatures(text: Optional[str], range_text: Optional[str]) -> list[float]:
    """Sorted, de-duplicated temperatures from ``--temperatures`` and ``--temperature-range``."""
    values = []
    if text is not None:
        option = "--temperatures"
        for item in (part.strip() for part in text.split(",")):
            if item:
                values.append(cli.check_positive(option, cli.parse_float(option, item)))
    if range_text is not None:
        option = "--temperature-range"
        parts = range_text.split(":")
        if len(parts) != 3:
            raise cli.bad_value(option, "must be START:STOP:STEP", repr(range_text))
        start, stop, step = (cli.check_positive(option, cli.parse_float(option, p)) for p in parts)
        if stop < start:
            raise cli.bad_value(option, "STOP must be >= START", repr(range_text))
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        values.extend(round(start + i * step, 10) for i in range(count))
    if not values:
        raise cli.bad_value("--temperatures", "must give at least one temperature (with "
                                              "--temperatures and/or --temperature-range)",
                            repr(text) if text is not None else "none")
    return sorted(set(values))


def _labelled(option: str, text: str, what: str) -> tuple[str, str]:
    label, sep, value = text.partition("=")
    if not sep or not label or not value:
        raise cli.bad_value(option, f"must be LABEL={what}", repr(text))
    return label, value


def parse_models(specs: Sequence[str], data_dirs: Sequence[str] = ()) -> list[ModelSpec]:
    """``--model LABEL=PATH[:PATH...]`` (checkpoints that must exist) and ``--model-data
    LABEL=DIR`` -> model specs."""
    models = []
    for spec in specs:
        label, path = _labelled("--model", spec, "PATH")
        if label in {m.label for m in models}:
            raise cli.bad_value("--model", "must give each label once", f"{label!r} twice")
        paths = [p for p in path.split(os.pathsep) if p]
        for p in paths:
            cli.check_input_file(f"--model {label}", p)
        models.append(ModelSpec(label, [os.path.abspath(p) for p in paths]))
    by_label = {m.label: m for m in models}
    for text in data_dirs:
        label, directory = _labelled("--model-data", text, "DIR")
        if label not in by_label:
            raise cli.bad_value("--model-data", f"must name a --model label "
                                                f"({', '.join(by_label)})", repr(label))
        by_label[label].data = cli.check_input_dir(f"--model-data {label}", directory)
    return models


def check_sacrebleu_tokenizer(name: str) -> None:
    import sacrebleu

    if name not in sacrebleu.BLEU.TOKENIZERS:
        raise cli.bad_value("--sacrebleu-tokenizer",
                            f"must be one of {', '.join(sacrebleu.BLEU.TOKENIZERS)}", repr(name))


# -- fairseq's configuration --------------------------------------------------------------------

def fairseq_config(args):
    """fairseq-generate's configuration for these options (task translation, sacrebleu scoring)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [args.data, "--task", "translation", "--gen-subset", args.gen_subset,
            "--beam", args.beam, "--lenpen", args.lenpen, "--unkpen", args.unkpen,
            "--min-len", args.min_len, "--max-len-a", args.max_len_a, "--max-len-b", args.max_len_b,
            "--no-repeat-ngram-size", args.no_repeat_ngram_size,
            "--required-batch-size-multiple", args.required_batch_size_multiple,
            "--seed", args.seed, "--num-workers", 0, "--scoring", "sacrebleu",
            "--sacrebleu-tokenizer", args.sacrebleu_tokenizer]
    for flag, value in [("--max-tokens", args.max_tokens), ("--batch-size", args.batch_size),
                        ("--remove-bpe", args.remove_bpe), ("--source-lang", args.source_lang),
                        ("--target-lang", args.target_lang)]:
        if value is not None:
            argv += [flag, value]
    for flag, on in [("--cpu", args.cpu), ("--sacrebleu-lowercase", args.sacrebleu_lowercase),
                     ("--skip-invalid-size-inputs-valid-test",
                      args.skip_invalid_size_inputs_valid_test)]:
        if on:
            argv.append(flag)
    parser = options.get_generation_parser(default_task="translation")
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(parser, [str(a) for a in argv]))
    if cfg.dataset.max_tokens is None and cfg.dataset.batch_size is None:
        cfg.dataset.max_tokens = 12000  # fairseq-generate's default
    return cfg


# -- outputs ------------------------------------------------------------------------------------

CSV_COLUMNS = ["model", "temperature", "bleu", "nll", "nll_base2", "ece", "mce", "brier",
               "confidence", "accuracy", "tokens", "sentences", "ece_low", "ece_high",
               "hypothesis_ece", "hypothesis_ece_low", "hypothesis_ece_high",
               "hypothesis_confidence", "hypothesis_accuracy", "hypothesis_tokens"]


def row(point: dict) -> dict:
    cal, hyp = point["calibration"], point["hypothesis_calibration"]
    low, high = cal.get("intervals", {}).get("ece", (None, None))
    hyp_low, hyp_high = hyp.get("intervals", {}).get("ece", (None, None))
    return {"model": point["model"], "temperature": point["temperature"], "bleu": point["bleu"],
            "nll": cal["nll"], "nll_base2": cal["nll_base2"], "ece": cal["ece"], "mce": cal["mce"],
            "brier": cal["brier"], "confidence": cal["confidence"], "accuracy": cal["accuracy"],
            "tokens": cal["count"], "sentences": point["sentences"], "ece_low": low,
            "ece_high": high, "hypothesis_ece": hyp["ece"], "hypothesis_ece_low": hyp_low,
            "hypothesis_ece_high": hyp_high, "hypothesis_confidence": hyp["confidence"],
            "hypothesis_accuracy": hyp["accuracy"], "hypothesis_tokens": hyp["count"]}


def best_temperatures(rows: Sequence[dict]) -> dict:
    """Per model: T minimising ECE, T minimising NLL, T maximising BLEU."""
    best = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        best[model] = {"ece": min(mine, key=lambda r: r["ece"])["temperature"],
                       "hypothesis_ece": min(mine, key=lambda r: r["hypothesis_ece"])["temperature"],
                       "nll": min(mine, key=lambda r: r["nll"])["temperature"],
                       "bleu": max(mine, key=lambda r: r["bleu"])["temperature"]}
    return best


def interval(low, high) -> str:
    """``[0.049,0.061]`` (no space: one column), ``-`` without bootstrap."""
    return "-" if low is None or high is None else f"[{low:.3f},{high:.3f}]"


def table(rows: Sequence[dict], best: dict, signature: str) -> str:
    """ECE: the reference reading (given the reference prefix); hypECE: the generated tokens';
    each followed by its 95% bootstrap interval over sentences."""
    lines = [f"{'model':<12} {'T':>6} {'BLEU':>7} {'NLL':>8} {'ECE':>8} {'ECE_95%':>15} "
             f"{'hypECE':>8} {'hypECE_95%':>15} {'conf':>7} {'acc':>7}"]
    for r in rows:
        lines.append(f"{r['model']:<12} {r['temperature']:>6g} {r['bleu']:>7.2f} {r['nll']:>8.4f} "
                     f"{r['ece']:>8.4f} {interval(r['ece_low'], r['ece_high']):>15} "
                     f"{r['hypothesis_ece']:>8.4f} "
                     f"{interval(r['hypothesis_ece_low'], r['hypothesis_ece_high']):>15} "
                     f"{r['confidence']:>7.4f} {r['accuracy']:>7.4f}")
    for model, b in best.items():
        lines.append(f"{model}: best ECE at T={b['ece']:g}, best hypothesis ECE at "
                     f"T={b['hypothesis_ece']:g}, best NLL at T={b['nll']:g}, "
                     f"best BLEU at T={b['bleu']:g}")
    lines.append(f"sacreBLEU signature: {signature}")
    return "\n".join(lines)


def write_outputs(output_dir: str, points: Sequence[dict], args) -> tuple[list, dict]:
    from .plots import temperature_sweep

    rows = [row(p) for p in points]
    best = best_temperatures(rows)
    summary = {"data": os.path.abspath(args.data), "subset": args.gen_subset,
               "sacrebleu_signature": points[0]["signature"], "best": best,
               "config": {p["model"]: p["config"] for p in points},
               "points": [{**r, "bleu_string": p["bleu_string"], "calibration": p["calibration"],
                           "hypothesis_calibration": p["hypothesis_calibration"],
                           "subset_sentences": p["subset_sentences"]}
                          for r, p in zip(rows, points)]}
    # keys sorted: the same bytes whether a point was computed now or read back from points.jsonl
    atomic.write_text(os.path.join(output_dir, "sweep.json"),
                      json.dumps(summary, indent=2, sort_keys=True) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(os.path.join(output_dir, "sweep.csv"), buffer.getvalue())
    temperature_sweep(rows, os.path.join(output_dir, "sweep.png"))
    return rows, best


# -- main ---------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    with cli.exit_on_usage_error():
        temperatures = parse_temperatures(args.temperatures, args.temperature_range)
        specs = parse_models(args.model, args.model_data)
        cli.check_output_dir("--output-dir", args.output_dir)
        check_sacrebleu_tokenizer(args.sacrebleu_tokenizer)
    # before fairseq is imported (some of its modules call logging.basicConfig at DEBUG level)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.WARNING, stream=sys.stderr)
    import ls_plugins
    from .sweep import run_sweep

    ls_plugins.register_fairseq()
    try:
        with cli.exit_on_usage_error():
            points = run_sweep(args, fairseq_config(args), specs, temperatures)
    except KeyboardInterrupt:
        print(f"ls-sweep: interrupted; finished points are kept in "
              f"{os.path.join(args.output_dir, RESUME_FILE)}: re-run the same command to resume",
              file=sys.stderr)
        raise SystemExit(130) from None
    rows, best = write_outputs(args.output_dir, points, args)
    print(table(rows, best, points[0]["signature"]))
    print(f"wrote {', '.join(os.path.join(args.output_dir, name) for name in OUTPUTS)}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
