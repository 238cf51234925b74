"""The temperature sweep's engine: BLEU, NLL and ECE of beam search over softmax temperatures.

The command line and the outputs (``ls-sweep``, paper Fig. 4) are :mod:`ls_plugins.sweep_cli`.
For every labelled model (a fairseq checkpoint, or an ensemble ``a.pt:b.pt``) and every
temperature ``T`` the sweep computes, on one subset of a fairseq data directory:

- **BLEU** of beam search with the logits divided by ``T`` at every step (fairseq's
  ``SequenceGenerator`` with ``--temperature T``), hypotheses and references decoded and scored
  with sacreBLEU as ``fairseq-generate --scoring sacrebleu`` does;
- **NLL, ECE, MCE, Brier score, mean confidence and accuracy** of the next-token predictions
  ``softmax(logits / T)`` *given the reference prefix*, at every non-pad target position (EOS
  included), from :class:`~ls_plugins.calibration.CalibrationStats` (the *reference* reading);
- the same of the *hypothesis* reading: every token of the best hypothesis of the beam search at
  ``T``, with its generation probability, correct when aligned to an identical reference token
  (as ``fairseq-generate --task translation_calibration`` measures it:
  :mod:`ls_plugins.tasks.generation_calibration`).

Intervals: a Poisson bootstrap over sentences (``--calibration-bootstrap`` replicates,
``--calibration-seed``); every sentence of the subset is batched and scored, whatever
``--required-batch-size-multiple`` says (:mod:`ls_plugins.tasks.batching`).

Each model and the data are loaded once (models through :mod:`ls_plugins.fairseq_models`: safe
loading, source and target dictionaries equal to DATA's symbol by symbol, a plain linear output
layer).  One teacher-forced pass per model gives NLL/ECE for all temperatures; beam search runs
once per ``T``, or for ``K`` temperatures at once (``--temperature-batch K``: the batch repeated
``K`` times with one temperature per row).  Every finished (model, T) point is appended to
``points.jsonl`` and fsync'd; a re-run with the same options skips the points already there.
Every check runs before the output directory is touched; bad input raises
:class:`~ls_plugins.cli.UsageError`.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

from . import cli

# torch, fairseq and sacrebleu are imported where used: the command line answers at once.
RESUME_FILE = "points.jsonl"


@dataclass
class ModelSpec:
    """A labelled model: its checkpoint(s) and, optionally, the directory with its dictionaries."""

    label: str
    paths: list[str]
    data: Optional[str] = None


# -- loading ------------------------------------------------------------------------------------

def setup_task(cfg):
    """The translation task on DATA with the subset loaded."""
    from fairseq import tasks

    data = cfg.task.data
    cli.check_input_dir("data", data)
    try:
        task = tasks.setup_task(cfg.task)
    except Exception as err:  # fairseq raises plain Exceptions for missing dictionaries/languages
        raise cli.bad_value("data", "must be a fairseq data directory with the dictionaries of "
                                    "its languages (set --source-lang/--target-lang?)",
                            f"{data} ({cli.first_line(err)})") from None
    from .tasks.batching import keep_every_example

    keep_every_example(task)  # fairseq's batches plus the last one it would drop
    subset = cfg.dataset.gen_subset
    try:
        task.load_dataset(subset)
    except FileNotFoundError as err:
        raise cli.bad_value("--gen-subset", f"must name a subset of {data}",
                            f"{subset} ({cli.first_line(err)})") from None
    return task


def load_models(specs: Sequence[ModelSpec], task, cfg) -> dict[str, list]:
    """label -> list of models (an ensemble), ready for inference.

    Each checkpoint is read once and refused (one line naming ``--model LABEL``) unless its
    source and target dictionaries equal DATA's symbol by symbol and its output layer is a plain
    linear layer (the calibration pass divides its logits by ``T``).
    """
    import torch

    from .fairseq_models import load_ensemble, output_projection

    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    reference = f"DATA ({cfg.task.data})"
    loaded = {}
    for spec in specs:
        option = f"--model {spec.label}"
        models = load_ensemble(spec.paths, task, option=option, reference=reference,
                               data=spec.data, data_option=f"--model-data {spec.label}=DIR")
        for path, model in zip(spec.paths, models):
            output_projection(model, option=option, path=path)
            if use_cuda:
                model.cuda()
            model.prepare_for_inference_(cfg)
        loaded[spec.label] = models
    return loaded


def max_positions(task, models):
    """The longest source/target the task and all models accept (as fairseq-generate resolves it)."""
    from fairseq import utils

    return utils.resolve_max_positions(task.max_positions(), *[m.max_positions() for m in models])


def load_batches(task, cfg, positions) -> list[dict]:
    """The subset's batches exactly as fairseq-generate builds them (``max_positions`` given)."""
    import torch
    from fairseq import utils

    from .fairseq_models import epoch_batches

    subset = cfg.dataset.gen_subset
    itr = epoch_batches(task, subset, max_tokens=cfg.dataset.max_tokens,
                        batch_size=cfg.dataset.batch_size, max_positions=positions,
                        ignore_invalid_inputs=cfg.dataset.skip_invalid_size_inputs_valid_test,
                        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
                        seed=cfg.common.seed)
    use_cuda = torch.cuda.is_available() and not cfg.common.cpu
    batches = [utils.move_to_cuda(s) if use_cuda else s for s in itr if "net_input" in s]
    if not batches:
        raise cli.bad_value("--gen-subset", "must leave a sentence to translate (all were "
                                            "skipped, or fewer than --required-batch-size-multiple)",
                            subset)
    return batches


# -- the two passes -----------------------------------------------------------------------------

def calibration_by_temperature(models, batches, temperatures, pad: int, n_bins: int, *,
                               bootstrap: int = 0, seed: int = 0) -> dict:
    """``{T: CalibrationStats}`` from one teacher-forced forward pass per batch.

    The generation hook's quantities (``decoder_log_probs`` at ``T``, every non-pad target
    position; ``bootstrap`` replicates over sentences drawn with ``seed``).  A single model (its
    output layer is a plain linear layer, :func:`load_models`) is scored from its logits for all
    temperatures at once (:func:`~ls_plugins.calibration.update_at_temperatures`).
    """
    from .calibration import CalibrationStats, update_at_temperatures
    from .teacher_forcing import decoder_logits, decoder_log_probs

    stats = {t: CalibrationStats(n_bins, bootstrap=bootstrap, seed=seed) for t in temperatures}
    for sample in batches:
        outputs = decoder_logits(models, sample)
        groups = sample["id"].view(-1, 1).expand_as(sample["target"])
        if len(models) == 1:
            update_at_temperatures(stats, outputs[0][0], sample["target"], ignore_index=pad,
                                   groups=groups)
        else:
            for t in temperatures:
                stats[t].update(decoder_log_probs(models, outputs, t), sample["target"],
                                ignore_index=pad, groups=groups)
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


def beam_search(task, models, batches, cfg, temperatures: Sequence[float],
                hypothesis_stats: Optional[dict] = None) -> dict:
    """``{T: (references, hypotheses)}``: detokenised strings, as fairseq-generate scores them.

    One temperature: fairseq's generator with ``--temperature T``.  Several: one generator over
    the batch repeated once per temperature (:func:`_row_temperature_ensemble`).
    ``hypothesis_stats``: ``{T: CalibrationStats}`` that get every token of each best hypothesis
    (the hypothesis reading, :func:`~ls_plugins.tasks.generation_calibration.hypothesis_predictions`).
    """
    import torch
    from fairseq import utils
    from fairseq_cli.generate import get_symbols_to_strip_from_output

    from .tasks.generation_calibration import hypothesis_predictions

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
        for j, t in enumerate(temperatures if hypothesis_stats is not None else ()):
            best = [hypos[j * size + i][0] for i in range(size)]
            confidence, correct, groups = hypothesis_predictions(best, sample["target"],
                                                                 sample["id"], tgt_dict.pad())
            hypothesis_stats[t].update_confidences(confidence, correct, groups=groups)
    return pairs


def corpus_bleu(references: Sequence[str], hypotheses: Sequence[str], cfg):
    """sacreBLEU's corpus score and signature (tokenised once, as fairseq's sacrebleu scorer)."""
    import sacrebleu

    metric = sacrebleu.BLEU(tokenize=cfg.scoring.sacrebleu_tokenizer,
                            lowercase=cfg.scoring.sacrebleu_lowercase)
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score, metric.get_signature().format()


# -- points and the resume file ------------------------------------------------------------------

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
        "calibration_bootstrap": args.calibration_bootstrap,
        "calibration_seed": args.calibration_seed, "batches": "every sentence",
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


# -- the sweep ----------------------------------------------------------------------------------

def run_sweep(args, cfg, specs: Sequence[ModelSpec], temperatures: Sequence[float]) -> list[dict]:
    """Load once, check, then compute every (model, T) point not already in points.jsonl.

    ``args``: the command line (:func:`ls_plugins.sweep_cli.build_parser`); ``cfg``: fairseq's
    generation config for it.  Returns the points, models in order, temperatures ascending.
    """
    import numpy as np
    from fairseq import utils
    from tqdm import tqdm

    from .calibration import CalibrationStats

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

    # everything is checked: from here on the output directory is written
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
                                           args.calibration_bins,
                                           bootstrap=args.calibration_bootstrap,
                                           seed=args.calibration_seed)
        for start in range(0, len(pending), args.temperature_batch):
            group = pending[start:start + args.temperature_batch]
            progress.set_postfix_str(f"{spec.label} T={','.join(f'{t:g}' for t in group)}")
            began = time.perf_counter()
            generated = {t: CalibrationStats(args.calibration_bins, seed=args.calibration_seed,
                                             bootstrap=args.calibration_bootstrap) for t in group}
            pairs = beam_search(task, ensemble, batches[spec.label], cfg, group, generated)
            seconds = (time.perf_counter() - began) / len(group)
            for t in group:
                references, hypotheses = pairs[t]
                score, signature = corpus_bleu(references, hypotheses, cfg)
                point = {"model": spec.label, "temperature": t, "config": configs[spec.label],
                         "bleu": score.score, "bleu_string": score.format(), "signature": signature,
                         "sentences": len(hypotheses),
                         "subset_sentences": len(task.dataset(cfg.dataset.gen_subset)),
                         "calibration": stats[t].to_dict(),
                         "hypothesis_calibration": generated[t].to_dict(),
                         "seconds": seconds,
                         "finished": datetime.datetime.now(datetime.timezone.utc).isoformat()}
                append_point(resume, point)
                done[spec.label, t] = point
                progress.update(1)
    progress.close()
    return [done[s.label, t] for s in specs for t in temperatures]
