"""Logging helpers shared by our criteria: loss/nll/ppl/accuracy and validation calibration.

Every value a criterion logs is correct when summed over batches and workers (fairseq sums
logging outputs key by key before ``reduce_metrics``, tensors included).  Calibration is logged
as per-bin sums under keys starting with ``_`` (fairseq hides those from the progress bar) and
ECE is derived from the summed bins, never averaged.  With ``--calibration-bootstrap B`` the
Poisson-bootstrap replicate tables over validation sentences (group id ``sample["id"]``) travel
as one float64 tensor of shape ``B x (3 n_bins + 2)`` (see
:class:`~ls_plugins.calibration.CalibrationStats`) under ``_cal_replicates_BxW``: the shape is in
the key because fairseq's "valid" meters are kept in checkpoints, and a run resumed with another
``B`` or ``n_bins`` must not add tables of two shapes.  The weights depend only on the seed and
the sentence id, so any batching and any number of workers give the same intervals.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from fairseq import utils
from fairseq.logging import metrics

from ..calibration import CalibrationStats

CAL_KEYS = ("_cal_count_", "_cal_conf_", "_cal_correct_")
BRIER_KEY = "_cal_brier"
REPLICATES_PREFIX = "_cal_replicates_"
INTERVAL_LEVEL = 0.95
# interval keys: (logged name, CalibrationStats metric, factor to the unit of the logged value)
INTERVALS = (("ece", "ece", 1.0), ("nll_loss", "nll", 1.0 / math.log(2)),
             ("accuracy", "accuracy", 100.0))


def replicates_key(replicate_sums: torch.Tensor) -> str:
    """The logging key of a replicate table: ``_cal_replicates_BxW`` (its shape)."""
    return REPLICATES_PREFIX + "x".join(str(n) for n in replicate_sums.shape)


def sentence_ids(sample: dict, target: torch.Tensor) -> torch.Tensor:
    """The id of each position's sentence, for ``target`` flattened from ``(bsz, length)``."""
    ids = sample["id"].view(-1, 1)
    return ids.expand(ids.size(0), target.numel() // ids.size(0)).reshape(-1)


def calibration_logging_output(lprobs: torch.Tensor, target: torch.Tensor, padding_idx: int,
                               n_bins: int, *, bootstrap: int = 0, seed: int = 0,
                               groups: Optional[torch.Tensor] = None) -> dict:
    """Per-bin sums of next-token confidence/accuracy (and the Brier sum) over non-pad positions,
    as flat floats; with ``bootstrap``, the replicate sums over ``groups`` (one id per target
    position: its sentence) as one float64 tensor under :func:`replicates_key`."""
    stats = CalibrationStats(n_bins, bootstrap=bootstrap, seed=seed)
    stats.update(lprobs, target, ignore_index=padding_idx, groups=groups)
    output = {BRIER_KEY: stats.brier_sum}
    for prefix, values in zip(CAL_KEYS, (stats.counts, stats.conf_sums, stats.correct_sums)):
        output.update({f"{prefix}{i}": float(v) for i, v in enumerate(values.tolist())})
    if bootstrap:
        output[replicates_key(stats.replicate_sums)] = stats.replicate_sums
    return output


def accuracy_logging_output(predicted: torch.Tensor, target: torch.Tensor, padding_idx: int) -> dict:
    """Correct arg-max predictions (``predicted``: the arg-max classes) among non-pad targets."""
    mask = target.ne(padding_idx)
    n_correct = predicted.masked_select(mask).eq(target.masked_select(mask)).sum()
    return {"n_correct": utils.item(n_correct.data), "total": utils.item(mask.sum().data)}


def _summed(logging_outputs, key) -> float:
    return utils.item(sum(log.get(key, 0) for log in logging_outputs))


def reduce_loss_metrics(logging_outputs, extra_token_sums: tuple[str, ...] = ()) -> None:
    """loss (per sample_size) and nll_loss (per token) in base 2 like fairseq, ppl, accuracy.

    ``extra_token_sums`` names further per-token sums to log in base 2 (e.g. a soft-target term).
    """
    loss_sum = _summed(logging_outputs, "loss")
    nll_loss_sum = _summed(logging_outputs, "nll_loss")
    ntokens = _summed(logging_outputs, "ntokens")
    sample_size = _summed(logging_outputs, "sample_size")
    metrics.log_scalar("loss", loss_sum / sample_size / math.log(2), sample_size, round=3)
    metrics.log_scalar("nll_loss", nll_loss_sum / ntokens / math.log(2), ntokens, round=3)
    metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
    for key in extra_token_sums:
        metrics.log_scalar(key, _summed(logging_outputs, key) / ntokens / math.log(2), ntokens, round=3)

    total = _summed(logging_outputs, "total")
    if total > 0:
        metrics.log_scalar("total", total)
        metrics.log_scalar("n_correct", _summed(logging_outputs, "n_correct"))
        metrics.log_derived(
            "accuracy",
            lambda meters: round(meters["n_correct"].sum * 100.0 / meters["total"].sum, 3)
            if meters["total"].sum > 0 else float("nan"))
    reduce_calibration_metrics(logging_outputs, with_accuracy=total > 0)


def reduce_calibration_metrics(logging_outputs, with_accuracy: bool = False) -> None:
    """Sum the per-bin calibration statistics and derive ``ece``, ``mce``, ``confidence`` (mean
    next-token confidence) and ``brier`` from the sums (validation only).

    With replicate tables (``--calibration-bootstrap``), also the 95% percentile intervals
    ``ece_low``/``ece_high``, ``nll_loss_low``/``nll_loss_high`` (per scored token, in bits like
    ``nll_loss``) and, with ``with_accuracy`` (``--report-accuracy``), ``accuracy_low``/
    ``accuracy_high`` (in percent like ``accuracy``).
    """
    if not logging_outputs or f"{CAL_KEYS[0]}0" not in logging_outputs[0]:
        return
    n_bins = sum(1 for key in logging_outputs[0] if key.startswith(CAL_KEYS[0]))
    for key in [f"{prefix}{i}" for prefix in CAL_KEYS for i in range(n_bins)] + [BRIER_KEY]:
        metrics.log_scalar_sum(key, _summed(logging_outputs, key))
    replicates = next((key for key in logging_outputs[0] if key.startswith(REPLICATES_PREFIX)),
                      None)
    if replicates:  # summed as a tensor (utils.item would refuse it), kept off the GPU
        metrics.log_scalar_sum(replicates, sum(
            log[replicates].detach().to("cpu", torch.float64) for log in logging_outputs))

    def stats(meters) -> CalibrationStats:
        counts, confs, corrects = ([meters[f"{prefix}{i}"].sum for i in range(n_bins)]
                                   for prefix in CAL_KEYS)
        return CalibrationStats.from_sums(
            counts, confs, corrects, brier_sum=meters[BRIER_KEY].sum,
            replicate_sums=meters[replicates].sum if replicates else None)
    for name in ("ece", "mce", "confidence", "brier"):
        metrics.log_derived(name, lambda meters, name=name: getattr(stats(meters), name)())
    if not replicates:
        return
    for name, metric, factor in INTERVALS:
        if name == "accuracy" and not with_accuracy:
            continue
        for end, bound in enumerate(("low", "high")):
            metrics.log_derived(f"{name}_{bound}", lambda meters, metric=metric, factor=factor,
                                end=end: stats(meters).interval(metric, INTERVAL_LEVEL)[end] * factor)
