"""Equal-width confidence bins and the metrics computed from their sums.

Bins: ``n_bins`` equal-width bins with edges ``torch.linspace(0, 1, n_bins + 1)`` in float64;
bin ``i`` holds values in ``(i/n, (i+1)/n]`` and the first bin also holds exactly 0.  The sums
of a bin (count ``n_b``, confidence sum ``C_b``, correct count ``A_b``) are float64, so tables of
batches, shards, workers and bootstrap replicates add up exactly.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .cli import bad_value, check_int_at_least

DEFAULT_BINS = 15
METRICS = ("ece", "mce", "debiased_ce2", "nll", "brier", "accuracy", "confidence")


def check_bins(n_bins: int, option: str = "--calibration-bins") -> int:
    """Return ``n_bins`` if it is an integer >= 1; raise ``ValueError`` otherwise."""
    return check_int_at_least(option, n_bins, 1)


def bin_edges(n_bins: int) -> Tensor:
    return torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)


def bin_index(values: Tensor, n_bins: int) -> Tensor:
    """The bin (0 .. n_bins-1) of every value in [0, 1], on the CPU as int64."""
    values = values.detach().double().cpu()
    return (torch.bucketize(values, bin_edges(n_bins), right=False) - 1).clamp_(0, n_bins - 1)


def bin_sums(confidence: Tensor, correct: Tensor, n_bins: int = DEFAULT_BINS) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin ``(count, confidence sum, correct count)`` as float64 vectors of length ``n_bins``."""
    confidence = confidence.detach().reshape(-1).double().cpu()
    correct = correct.detach().reshape(-1).double().cpu()
    index = bin_index(confidence, n_bins)
    values = torch.stack([torch.ones_like(confidence), confidence, correct])
    sums = torch.zeros(3, n_bins, dtype=torch.float64).scatter_add_(1, index.expand(3, -1), values)
    return sums[0], sums[1], sums[2]


def class_bin_sums(probs: Tensor, target: Tensor, n_bins: int) -> Tensor:
    """Per class ``k`` and bin ``b`` of ``p_k`` (every class probability binned, the marginal
    ECE's table): ``[count, sum of p_k, count of y == k]`` as a float64 ``3 x K x n_bins`` tensor.

    Without a loop over classes and without binning all N x K probabilities one by one: only
    those above the first edge ``1/n_bins`` (at most ``n_bins`` per row, since a row sums to 1)
    are binned individually; bin 0 of class ``k`` holds the rest of its ``N`` predictions and
    of its column sum ``sum_i p_ik``.
    """
    probs = probs.detach()
    n, k = probs.shape
    sums = torch.zeros(3, k, n_bins, dtype=torch.float64)
    flat = sums.view(3, -1)
    first_edge = bin_edges(n_bins)[1]
    # the largest value of probs' dtype <= the float64 edge: ``p > it`` iff ``p > edge`` exactly
    threshold = first_edge.to(probs.dtype)
    if threshold.double() > first_edge:
        threshold = torch.nextafter(threshold, torch.tensor(-1.0, dtype=probs.dtype))
    rows, classes = (probs > threshold.to(probs.device)).nonzero(as_tuple=True)
    values = probs[rows, classes].double().cpu()
    above = classes.cpu() * n_bins + bin_index(values, n_bins)
    flat[0].index_add_(0, above, torch.ones_like(values))
    flat[1].index_add_(0, above, values)
    sums[0, :, 0] = n - sums[0, :, 1:].sum(-1)
    column_sums = (probs.new_ones(1, n) @ probs).squeeze(0)  # one BLAS pass, in probs' dtype
    sums[1, :, 0] = column_sums.double().cpu() - sums[1, :, 1:].sum(-1)
    p_true = probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    of_target = target.cpu() * n_bins + bin_index(p_true, n_bins)
    flat[2].index_add_(0, of_target, torch.ones(n, dtype=torch.float64))
    return sums


def metric_from_sums(metric: str, counts: Tensor, conf_sums: Tensor, correct_sums: Tensor,
                     nll_sum: Optional[Tensor] = None, brier_sum: Optional[Tensor] = None) -> Tensor:
    """``metric`` (one of :data:`METRICS`) from per-bin sums whose last dimension is the bin.

    Leading dimensions (bootstrap replicates) are kept; nan where there are no predictions.
    ``debiased_ce2`` is Kumar et al. (2019)'s debiased estimator of the squared calibration error,
    ``sum_b (n_b/N) [(C_b/n_b - A_b/n_b)^2 - a_b (1 - a_b) / (n_b - 1)]`` with ``a_b = A_b/n_b``
    (the plug-in estimate minus each bin's variance of its mean accuracy); bins with fewer than
    two predictions contribute 0, as in the authors' code.  It can be negative.
    """
    total = counts.sum(-1)
    gap = (correct_sums - conf_sums).abs()
    if metric == "ece":
        return gap.sum(-1) / total
    if metric == "mce":
        per_bin = torch.where(counts > 0, gap / counts.clamp_min(1), -math.inf).amax(-1)
        return torch.where(per_bin.isinf(), math.nan, per_bin)
    if metric == "debiased_ce2":
        n = counts.clamp_min(2)
        accuracy = correct_sums / n
        term = counts * ((gap / n).square() - accuracy * (1 - accuracy) / (n - 1))
        return torch.where(counts >= 2, term, 0.0).sum(-1) / total
    if metric == "accuracy":
        return correct_sums.sum(-1) / total
    if metric == "confidence":
        return conf_sums.sum(-1) / total
    if metric in ("nll", "brier"):
        return (nll_sum if metric == "nll" else brier_sum) / total
    raise bad_value("metric", f"must be one of {', '.join(METRICS)}", repr(metric))


def ece_from_bin_sums(counts, conf_sums, correct_sums) -> float:
    """``sum_b |A_b - C_b| / N`` from per-bin sums (any sequences of equal length)."""
    return float(metric_from_sums("ece", *(torch.as_tensor(x, dtype=torch.float64)
                                           for x in (counts, conf_sums, correct_sums))))
