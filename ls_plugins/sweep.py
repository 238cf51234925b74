"""``ls-sweep``: BLEU, NLL and ECE of beam search over softmax temperatures (paper Fig. 4).

For every labelled model (a fairseq checkpoint, or an ensemble ``a.pt:b.pt``) and every temperature
``T`` the sweep reports, on one subset of a fairseq data directory:

- **BLEU** of beam search with the logits divided by ``T`` at every step (fairseq's
  ``SequenceGenerator`` with ``--temperature T``).  Hypotheses and references are decoded exactly
  as ``fairseq-generate`` decodes them (``--remove-bpe``), and scored with sacreBLEU as
  ``fairseq-generate --scoring sacrebleu`` scores them (``--sacrebleu-tokenizer``, default 13a); the
  sacreBLEU signature is reported.
- **NLL, ECE, MCE, Brier score, mean confidence and accuracy** of the next-token predictions
  ``softmax(logits / T)`` *given the reference prefix*, at every non-pad target position (EOS
  included), from :class:`~ls_plugins.calibration.CalibrationStats` -- the quantities the
  generation hook (``--task translation_calibration --scoring calibration``) reports.
- per model, the ``T`` minimising ECE, the ``T`` minimising NLL and the ``T`` maximising BLEU.

Each model and the data are loaded once.  One teacher-forced pass per model gives NLL/ECE for all
temperatures (they are applied to the same logits); beam search runs once per ``T`` in the same
process, or for ``--temperature-batch K`` temperatures at once: the batch is repeated ``K`` times
with one temperature per row.  With ``K = 1`` (the default) and the same batching options the BLEU
equals ``fairseq-generate --temperature T``'s exactly; larger ``K`` is faster, and BLEU may then
differ by floating-point rounding in batched matrix products (ties in the beam).

Writes to ``--output-dir``: ``points.jsonl`` (one line per finished (model, T) point, appended and
fsync'd: an interrupted sweep re-run with the same directory and options skips finished points;
points computed with other options are recomputed, never mixed in), then ``sweep.json``,
``sweep.csv`` and ``sweep.png`` (Fig. 4), each written atomically; the table goes to stdout.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from . import atomic, cli

# torch, fairseq, sacrebleu and matplotlib are imported where used: --help and bad command lines
# answer at once.
RESUME_FILE = "points.jsonl"
OUTPUTS = ("sweep.json", "sweep.csv", "sweep.png")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``ls-sweep: error: ...``, exit code 2, no usage dump)."""

    def error(self, message):
        cli.exit_with_error(message)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="ls-sweep",
        description="Temperature sweep of beam search (Mueller et al. 2019, Fig. 4): BLEU, "
                    "token-level NLL and ECE given the reference prefix, for each model and T.")
    parser.add_argument("data", help="fairseq data directory (fairseq-preprocess output)")
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                        help="a labelled checkpoint, e.g. hard=hard/checkpoint_best.pt; PATH may "
                             "be an ensemble a.pt:b.pt; repeat for several models (the first is "
                             "drawn without markers, the others with markers)")
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
    gen.add_argument("--lenpen", type=float, default=1.0,
                     help="length penalty: <1.0 favours shorter, >1.0 longer sentences")
    gen.add_argument("--unkpen", type=float, default=0.0,
                     help="unknown word penalty: <0 produces more unks, >0 fewer")
    gen.add_argument("--min-len", type=cli.int_at_least("--min-len", 1), default=1,
                     help="minimum generation length")
    gen.add_argument("--max-len-a", type=float, default=0.0,
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
                      help="batch sizes are a multiple of this; fairseq drops a last batch that "
                           "is smaller (use 1 to score every sentence)")
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

    run = parser.add_argument_group("running")
    run.add_argument("--cpu", action="store_true", help="use the CPU even if CUDA is available")
    run.add_argument("--seed", type=int, default=1, help="random seed (as fairseq-generate)")
    run.add_argument("--no-progress-bar", action="store_true", help="no progress bar on stderr")
    return parser


# -- command-line values ------------------------------------------------------------------------

def parse_temperatures(text: Optional[str], range_text: Optional[str]) -> list[float]:
    """Sorted, de-duplicated temperatures from ``--temperatures`` and ``--temperature-range``."""
    values = []
    if text is not None:
        for item in (part.strip() for part in text.split(",")):
            if item:
                values.append(cli.positive_float("--temperatures")(item))
    if range_text is not None:
        parts = range_text.split(":")
        if len(parts) != 3:
            cli.exit_with_error(f"--temperature-range must be START:STOP:STEP, got {range_text!r}")
        start, stop, step = (cli.positive_float("--temperature-range")(p) for p in parts)
        if stop < start:
            cli.exit_with_error(f"--temperature-range: STOP must be >= START, got {range_text!r}")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        values.extend(round(start + i * step, 10) for i in range(count))
    if not values:
        cli.exit_with_error("--temperatures: no temperature given (use --temperatures and/or "
                                "--temperature-range)")
    return sorted(set(values))


@dataclass
class ModelSpec:
    label: str
    paths: list[str]


def parse_models(specs: Sequence[str]) -> list[ModelSpec]:
    """``LABEL=PATH[:PATH...]`` -> labels and checkpoint paths, which must exist."""
    models = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            cli.exit_with_error(f"--model must be LABEL=PATH, got {spec!r}")
        if label in {m.label for m in models}:
            cli.exit_with_error(f"--model: label {label!r} given twice")
        paths = path.split(os.pathsep)
        for p in paths:
            if not os.path.isfile(p):
                cli.exit_with_error(f"--model {label}: checkpoint {p} not found")
        models.append(ModelSpec(label, [os.path.abspath(p) for p in paths]))
    return models


def check_output_dir(path: str) -> None:
    """Exit unless ``path`` is a directory or can be created as one."""
    if os.path.exists(path) and not os.path.isdir(path):
        cli.exit_with_error(f"--output-dir: {path} exists and is not a directory")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        cli.exit_with_error(f"--output-dir: cannot write to {path}")


def check_sacrebleu_tokenizer(name: str) -> None:
    import sacrebleu

    if name not in sacrebleu.BLEU.TOKENIZERS:
        cli.exit_with_error(f"--sacrebleu-tokenizer must be one of "
                                f"{', '.join(sacrebleu.BLEU.TOKENIZERS)}, got {name!r}")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# -- fairseq ------------------------------------------------------------------------------------

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


def setup_task(cfg):
    """The translation task on DATA with the subset loaded; one-line errors for bad data."""
    from fairseq import tasks

    if not os.path.isdir(cfg.task.data):
        cli.exit_with_error(f"data directory {cfg.task.data} not found")
    try:
        task = tasks.setup_task(cfg.task)
    except Exception as err:  # fairseq raises plain Exceptions for missing dictionaries/languages
        cli.exit_with_error(f"data directory {cfg.task.data}: {first_line(err)} "
                                f"(set --source-lang/--target-lang?)")
    try:
        task.load_dataset(cfg.dataset.gen_subset)
    except FileNotFoundError as err:
        cli.exit_with_error(f"--gen-subset {cfg.dataset.gen_subset}: {first_line(err)}")
    return task


def checkpoint_target_dictionary(state, target_lang: str) -> Optional[str]:
    """Path of the target dictionary a checkpoint was trained with, if that file still exists.

    The language is the checkpoint's, else inferred from its training data, else ``target_lang``.
    """
    from fairseq import utils
    from fairseq.data import data_utils

    task_cfg = (state.get("cfg") or {}).get("task") or {}
    if not task_cfg.get("data"):
        return None
    data = utils.split_paths(task_cfg["data"])[0]
    if not os.path.isdir(data):
        return None
    target = task_cfg.get("target_lang") or data_utils.infer_language_pair(data)[1] or target_lang
    path = os.path.join(data, f"dict.{target}.txt")
    return path if os.path.isfile(path) else None


def dictionary_difference(ours: Sequence[str], theirs: Sequence[str]) -> Optional[str]:
    """``"index i: 'a' vs 'b'"`` for the first differing symbol, None if equal."""
    for i in range(max(len(ours), len(theirs))):
        a = repr(ours[i]) if i < len(ours) else "<end of dictionary>"
        b = repr(theirs[i]) if i < len(theirs) else "<end of dictionary>"
        if a != b:
            return f"index {i}: {b} vs {a}"
    return None


def check_target_dictionary(label: str, path: str, state, task) -> None:
    """Exit unless the checkpoint was trained with DATA's target dictionary.

    Compared symbol by symbol with the dictionary of the checkpoint's training data when that is
    still on disk, else by the size of the output layer.
    """
    from fairseq.data import Dictionary

    ours = task.target_dictionary
    data_dict = os.path.join(task.cfg.data.split(os.pathsep)[0], f"dict.{task.cfg.target_lang}.txt")
    trained_with = checkpoint_target_dictionary(state, task.cfg.target_lang)
    if trained_with is not None:
        difference = dictionary_difference(ours.symbols, Dictionary.load(trained_with).symbols)
        if difference:
            cli.exit_with_error(
                f"--model {label}: the target dictionary of {path} ({trained_with}) differs from "
                f"{data_dict} at {difference}")
        return
    weights = state.get("model", {})
    for key in ("decoder.output_projection.weight", "decoder.embed_out", "decoder.embed_tokens.weight"):
        if key in weights and weights[key].size(0) != len(ours):
            cli.exit_with_error(
                f"--model {label}: {path} predicts {weights[key].size(0)} target symbols, but "
                f"{data_dict} has {len(ours)}: the target dictionaries differ")
        if key in weights:
            return


def load_models(specs: Sequence[ModelSpec], task, cfg) -> dict[str, list]:
    """label -> list of models (an ensemble), each checkpoint read once, ready for inference."""
    import torch
    from fairseq import checkpoint_utils

    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    loaded = {}
    for spec in specs:
        ensemble = []
        for path in spec.paths:
            try:
                state = checkpoint_utils.load_checkpoint_to_cpu(path)
            except Exception as err:
                cli.exit_with_error(f"--model {spec.label}: cannot load {path}: {first_line(err)}")
            check_target_dictionary(spec.label, path, state, task)
            try:
                models, _, _ = checkpoint_utils.load_model_ensemble_and_task([path], task=task,
                                                                            state=state)
            except Exception as err:
                cli.exit_with_error(f"--model {spec.label}: {path} does not fit {cfg.task.data}: "
                                        f"{first_line(err)}")
            for model in models:
                if use_cuda:
                    model.cuda()
                model.prepare_for_inference_(cfg)
            ensemble.extend(models)
        loaded[spec.label] = ensemble
    return loaded


def max_positions(task, models):
    """The longest source/target the task and all models accept (as fairseq-generate resolves it)."""
    from fairseq import utils

    return utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models])


def load_batches(task, cfg, positions) -> list[dict]:
    """The subset's batches exactly as fairseq-generate builds them (``max_positions`` given)."""
    import torch
    from fairseq import utils

    subset = cfg.dataset.gen_subset
    try:
        itr = task.get_batch_iterator(
            dataset=task.dataset(subset), max_tokens=cfg.dataset.max_tokens,
            max_sentences=cfg.dataset.batch_size, max_positions=positions,
            ignore_invalid_inputs=cfg.dataset.skip_invalid_size_inputs_valid_test,
            required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
            seed=cfg.common.seed, num_workers=0).next_epoch_itr(shuffle=False)
    except AssertionError as err:  # "Sentences lengths should not exceed max_tokens=N"
        if "max_tokens" not in str(err):
            raise
        cli.exit_with_error(f"--max-tokens {cfg.dataset.max_tokens}: {first_line(err)}")
    except Exception as err:  # a plain Exception for a sentence longer than the models accept
        if "is invalid" not in str(err):
            raise
        cli.exit_with_error(f"--gen-subset {subset}: {first_line(err)}")
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    batches = [utils.move_to_cuda(s) if use_cuda else s for s in itr if "net_input" in s]
    if not batches:
        cli.exit_with_error(f"--gen-subset {subset}: no sentence to translate (all skipped, or "
                                f"fewer than --required-batch-size-multiple)")
    return batches


# -- the two passes -----------------------------------------------------------------------------

def calibration_by_temperature(models, batches, temperatures, pad: int, n_bins: int) -> dict:
    """``{T: CalibrationStats}`` from one teacher-forced forward pass per batch.

    The generation hook's quantities (``decoder_log_probs`` at ``T``, every non-pad target
    position).  A single model whose output is a plain softmax is scored from its logits for all
    temperatures at once (:func:`~ls_plugins.calibration.update_at_temperatures`).
    """
    from .calibration import CalibrationStats, update_at_temperatures
    from .teacher_forcing import decoder_logits, decoder_log_probs

    stats = {t: CalibrationStats(n_bins) for t in temperatures}
    plain_softmax = len(models) == 1 and getattr(models[0].decoder, "adaptive_softmax", None) is None
    for sample in batches:
        outputs = decoder_logits(models, sample)
        if plain_softmax:
            update_at_temperatures(stats, outputs[0][0], sample["target"], ignore_index=pad)
        else:
            for t in temperatures:
                stats[t].update(decoder_log_probs(models, outputs, t), sample["target"],
                                ignore_index=pad)
    return stats


def _row_temperature_ensemble(models):
    """fairseq's ``EnsembleModel`` with one temperature per batch row.

    ``SequenceGenerator`` reorders the encoder output whenever it expands the batch to beams,
    reorders beams or drops finished sentences; the row temperatures follow that reordering, and
    every decoder step divides each row's logits by its own temperature.
    """
    from fairseq.sequence_generator import EnsembleModel

    class RowTemperatureEnsemble(EnsembleModel):
        row_temperature = None

        def reorder_encoder_out(self, encoder_outs, new_order):
            self.row_temperature = self.row_temperature.index_select(0, new_order)
            return super().reorder_encoder_out(encoder_outs, new_order)

        def forward_decoder(self, tokens, encoder_outs, incremental_states, temperature=1.0):
            return super().forward_decoder(tokens, encoder_outs, incremental_states,
                                           self.row_temperature.view(-1, 1, 1))

    return RowTemperatureEnsemble(models)


def _repeat_sample(sample: dict, times: int) -> dict:
    net_input = {k: v.repeat(times, *([1] * (v.dim() - 1))) for k, v in sample["net_input"].items()}
    return {"id": sample["id"].repeat(times), "net_input": net_input}


def beam_search(task, models, batches, cfg, temperatures: Sequence[float]) -> dict:
    """``{T: (references, hypotheses)}``: detokenised strings, as fairseq-generate scores them.

    One temperature: fairseq's generator with ``--temperature T``.  Several: one generator over
    the batch repeated once per temperature (:func:`_row_temperature_ensemble`).
    """
    import torch
    from fairseq import utils
    from fairseq_cli.generate import get_symbols_to_strip_from_output

    tgt_dict = task.target_dictionary
    post_process = cfg.common_eval.post_process
    if len(temperatures) == 1:
        cfg.generation.temperature = temperatures[0]
        generator = task.build_generator(models, cfg.generation)
    else:
        cfg.generation.temperature = 1.0
        ensemble = _row_temperature_ensemble(models)
        generator = task.build_generator(ensemble, cfg.generation)
    strip = get_symbols_to_strip_from_output(generator)
    pairs = {t: ([], []) for t in temperatures}
    for sample in batches:
        size = sample["id"].numel()
        if len(temperatures) == 1:
            hypos = task.inference_step(generator, models, sample)
        else:
            device = sample["net_input"]["src_tokens"].device
            ensemble.row_temperature = torch.tensor(temperatures, device=device).repeat_interleave(size)
            hypos = task.inference_step(generator, models, _repeat_sample(sample, len(temperatures)))
        for i in range(size):
            target = utils.strip_pad(sample["target"][i, :], tgt_dict.pad()).int().cpu()
            reference = tgt_dict.string(target, post_process, escape_unk=True,
                                        extra_symbols_to_ignore=strip)
            for j, t in enumerate(temperatures):
                best = hypos[j * size + i][0]
                pairs[t][0].append(reference)
                pairs[t][1].append(tgt_dict.string(best["tokens"].int().cpu(), post_process,
                                                   extra_symbols_to_ignore=strip))
    return pairs


def corpus_bleu(references: Sequence[str], hypotheses: Sequence[str], cfg):
    """sacreBLEU's corpus score and signature (tokenised once, as fairseq's sacrebleu scorer)."""
    import sacrebleu

    metric = sacrebleu.BLEU(tokenize=cfg.scoring.sacrebleu_tokenizer,
                            lowercase=cfg.scoring.sacrebleu_lowercase)
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score, metric.get_signature().format()


# -- resume file and outputs --------------------------------------------------------------------

def point_config(args, cfg, task, spec: ModelSpec) -> dict:
    """Everything a point's numbers depend on, except its temperature (the resume key)."""
    import torch

    return {
        "data": os.path.abspath(cfg.task.data), "subset": cfg.dataset.gen_subset,
        "languages": [task.cfg.source_lang, task.cfg.target_lang],
        "checkpoints": [{"path": p, "size": os.stat(p).st_size, "mtime_ns": os.stat(p).st_mtime_ns}
                        for p in spec.paths],
        "beam": args.beam, "lenpen": args.lenpen, "unkpen": args.unkpen, "min_len": args.min_len,
        "max_len_a": args.max_len_a, "max_len_b": args.max_len_b,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "temperature_batch": args.temperature_batch,
        "max_tokens": cfg.dataset.max_tokens, "batch_size": cfg.dataset.batch_size,
        "required_batch_size_multiple": args.required_batch_size_multiple,
        "skip_invalid_size_inputs_valid_test": args.skip_invalid_size_inputs_valid_test,
        "remove_bpe": args.remove_bpe, "sacrebleu_tokenizer": args.sacrebleu_tokenizer,
        "sacrebleu_lowercase": args.sacrebleu_lowercase, "calibration_bins": args.calibration_bins,
        "device": "cuda" if torch.cuda.is_available() and not args.cpu else "cpu",
    }


def read_points(path: str) -> list[dict]:
    """Finished points of earlier runs (a line torn by an interruption is ignored)."""
    if not os.path.exists(path):
        return []
    points = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                points.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return points


def append_point(path: str, point: dict) -> None:
    """Append one point as a JSON line and fsync it (after a torn line, start a new line)."""
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        prefix = b""
        if f.tell():
            f.seek(-1, os.SEEK_END)
            prefix = b"" if f.read(1) == b"\n" else b"\n"
        f.write(prefix + (json.dumps(point, sort_keys=True) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def finished_points(path: str, configs: dict, temperatures: Sequence[float]) -> dict:
    """``{(label, T): point}`` of the earlier points computed with exactly today's options."""
    done, other = {}, 0
    for point in read_points(path):
        config = configs.get(point.get("model"))
        if config is not None and point.get("config") == config \
                and point.get("temperature") in temperatures:
            done[point["model"], point["temperature"]] = point
        else:
            other += 1
    if done or other:
        note = f"; {other} other point(s) there (other options or models) are not used" if other else ""
        print(f"ls-sweep: reusing {len(done)} finished point(s) from {path}{note}", file=sys.stderr)
    return done


CSV_COLUMNS = ["model", "temperature", "bleu", "nll", "nll_base2", "ece", "mce", "brier",
               "confidence", "accuracy", "tokens", "sentences"]


def row(point: dict) -> dict:
    cal = point["calibration"]
    return {"model": point["model"], "temperature": point["temperature"], "bleu": point["bleu"],
            "nll": cal["nll"], "nll_base2": cal["nll_base2"], "ece": cal["ece"], "mce": cal["mce"],
            "brier": cal["brier"], "confidence": cal["confidence"], "accuracy": cal["accuracy"],
            "tokens": cal["count"], "sentences": point["sentences"]}


def best_temperatures(rows: Sequence[dict]) -> dict:
    """Per model: T minimising ECE, T minimising NLL, T maximising BLEU."""
    best = {}
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        best[model] = {"ece": min(mine, key=lambda r: r["ece"])["temperature"],
                       "nll": min(mine, key=lambda r: r["nll"])["temperature"],
                       "bleu": max(mine, key=lambda r: r["bleu"])["temperature"]}
    return best


def table(rows: Sequence[dict], best: dict, signature: str) -> str:
    lines = [f"{'model':<12} {'T':>6} {'BLEU':>7} {'NLL':>8} {'ECE':>8} {'conf':>7} {'acc':>7}"]
    for r in rows:
        lines.append(f"{r['model']:<12} {r['temperature']:>6g} {r['bleu']:>7.2f} {r['nll']:>8.4f} "
                     f"{r['ece']:>8.4f} {r['confidence']:>7.4f} {r['accuracy']:>7.4f}")
    for model, b in best.items():
        lines.append(f"{model}: best ECE at T={b['ece']:g}, best NLL at T={b['nll']:g}, "
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
               "points": [{**r, "bleu_string": p["bleu_string"], "calibration": p["calibration"]}
                          for r, p in zip(rows, points)]}
    atomic.write_json(os.path.join(output_dir, "sweep.json"), summary)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(os.path.join(output_dir, "sweep.csv"), buffer.getvalue())
    temperature_sweep(rows, os.path.join(output_dir, "sweep.png"))
    return rows, best


# -- main ---------------------------------------------------------------------------------------

def run_sweep(args, specs: Sequence[ModelSpec], temperatures: Sequence[float]) -> list[dict]:
    """Load once, validate, then compute every (model, T) point not already in points.jsonl."""
    # before fairseq is imported (some of its modules call logging.basicConfig at DEBUG level)
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.WARNING, stream=sys.stderr)
    import numpy as np
    from fairseq import utils
    from tqdm import tqdm

    import ls_plugins

    ls_plugins.register_fairseq()
    cfg = fairseq_config(args)
    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    task = setup_task(cfg)
    models = load_models(specs, task, cfg)
    by_positions = {}  # models accepting the same lengths share the batches
    batches = {}
    for spec in specs:
        key = repr(max_positions(task, models[spec.label]))
        if key not in by_positions:
            by_positions[key] = load_batches(task, cfg, max_positions(task, models[spec.label]))
        batches[spec.label] = by_positions[key]
    configs = {s.label: point_config(args, cfg, task, s) for s in specs}

    # everything is validated: from here on the output directory is written
    os.makedirs(args.output_dir, exist_ok=True)
    resume = os.path.join(args.output_dir, RESUME_FILE)
    done = finished_points(resume, configs, temperatures)

    pad = task.target_dictionary.pad()
    total = len(specs) * len(temperatures)
    progress = tqdm(total=total, initial=len(done), unit="point", desc="ls-sweep", file=sys.stderr,
                    disable=args.no_progress_bar, dynamic_ncols=True)
    for spec in specs:
        pending = [t for t in temperatures if (spec.label, t) not in done]
        if not pending:
            continue
        ensemble = models[spec.label]
        progress.set_postfix_str(f"{spec.label} teacher-forced")
        stats = calibration_by_temperature(ensemble, batches[spec.label], pending, pad,
                                           args.calibration_bins)
        for start in range(0, len(pending), args.temperature_batch):
            group = pending[start:start + args.temperature_batch]
            progress.set_postfix_str(f"{spec.label} T={','.join(f'{t:g}' for t in group)}")
            began = time.perf_counter()
            pairs = beam_search(task, ensemble, batches[spec.label], cfg, group)
            seconds = (time.perf_counter() - began) / len(group)
            for t in group:
                references, hypotheses = pairs[t]
                score, signature = corpus_bleu(references, hypotheses, cfg)
                point = {"model": spec.label, "temperature": t, "config": configs[spec.label],
                         "bleu": score.score, "bleu_string": score.format(), "signature": signature,
                         "sentences": len(hypotheses), "calibration": stats[t].to_dict(),
                         "seconds": seconds,
                         "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()}
                append_point(resume, point)
                done[spec.label, t] = point
                progress.update(1)
    progress.close()
    return [done[s.label, t] for s in specs for t in temperatures]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    temperatures = parse_temperatures(args.temperatures, args.temperature_range)
    specs = parse_models(args.model)
    check_output_dir(args.output_dir)
    check_sacrebleu_tokenizer(args.sacrebleu_tokenizer)
    try:
        points = run_sweep(args, specs, temperatures)
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
