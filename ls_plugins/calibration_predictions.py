"""From logits (or probabilities) to each prediction's confidence, correctness, NLL and Brier
score, fed to :class:`~ls_plugins.calibration.CalibrationStats` accumulators, for one or many
softmax temperatures at once.

One prediction's *confidence* is its largest probability and it is *correct* when its argmax
equals the target (the first maximum, as ``argmax`` picks).
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor

from .calibration_fit import flatten_predictions
from .losses import check_temperature

SMALL_K = 64  # up to this many classes a full arg-max pass is cheaper than avoiding it


def confidence_and_correct(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(max_k p_k, p_y, argmax_k p_k == y)`` per row, without a full arg-max pass for large K.

    The target is correct when its probability equals the maximum, unless another class ties
    with it and comes first (arg-max picks the first).  Two classes can only tie at the maximum
    when it is <= 1/2, so only those rows get an exact arg-max.
    """
    p_true = probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    if probs.size(-1) <= SMALL_K:  # few classes: torch's max-with-index is cheap
        confidence, prediction = probs.max(dim=-1)
        return confidence, p_true, prediction.eq(target)
    confidence = probs.amax(dim=-1)
    correct = p_true == confidence
    maybe_tied = correct & (confidence <= 0.5)
    if bool(maybe_tied.any()):
        rows = maybe_tied.nonzero().squeeze(1)
        correct[rows] = probs[rows].argmax(dim=-1) == target[rows]
    return confidence, p_true, correct


def _predicted_many_classes(z: Tensor, target: Tensor, target_is_max: Tensor,
                            tie_possible: Tensor) -> Tensor:
    """``argmax_k z_k == y`` per row without an arg-max pass over every row.

    The target is predicted when it is a maximum, unless an earlier class ties with it (arg-max
    picks the first); a tie needs ``sum_k exp((z_k - max z) / T) >= 2`` (``tie_possible``), so
    only those rows get an exact arg-max.
    """
    correct = target_is_max.clone()
    maybe_tied = correct & tie_possible
    if bool(maybe_tied.any()):
        rows = maybe_tied.nonzero().squeeze(1)
        correct[rows] = z[rows].argmax(dim=-1) == target[rows]
    return correct


def update_at_temperatures(stats: Mapping[float, "CalibrationStats"], logits: Tensor,
                           target: Tensor, *, ignore_index: Optional[int] = None,
                           groups: Optional[Tensor] = None) -> None:
    """Add the predictions ``softmax(logits / T)`` to ``stats[T]`` for every temperature ``T``.

    Shared by all temperatures: the arg-max, ``d_k = z_k - max_j z_j`` (0 at the maximum) and the
    target's ``d_y``.  Then each temperature costs one scaled exponential, ``e_k = exp(d_k / T)``,
    with ``s = sum_k e_k``: confidence ``1/s``, ``-log p_y = log s - d_y / T`` (no underflow),
    and ``sum_k p_k^2 = sum_k e_k^2 / s^2`` for the Brier score.  ``groups``: one integer id per
    target position, the unit the bootstrap resamples (see the module docstring).
    """
    for temperature in stats:
        check_temperature("temperature", temperature)
    logits, target, groups = flatten_predictions(logits, target, ignore_index, groups)
    if target.numel() == 0:
        return
    z = logits if logits.dtype == torch.float64 else logits.float()
    if z.size(-1) <= SMALL_K:  # few classes: the maximum and the arg-max in one cheap pass
        top, prediction = z.max(dim=-1, keepdim=True)
        correct = prediction.squeeze(-1).eq(target)
    else:
        top, correct = z.amax(dim=-1, keepdim=True), None
    shifted = z - top
    shifted_true = shifted.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    e = shifted if len(stats) == 1 else torch.empty_like(shifted)  # one temperature: in place
    for temperature, accumulator in stats.items():
        if temperature == 1.0:
            torch.exp(shifted, out=e)
            true_scaled = shifted_true
        else:
            torch.mul(shifted, 1.0 / temperature, out=e).exp_()
            true_scaled = shifted_true / temperature
        s = e.sum(-1)
        inv_s = s.reciprocal()
        if correct is None:
            correct = _predicted_many_classes(z, target, shifted_true == 0, s >= 2.0)
        sum_sq = torch.linalg.vector_norm(e, dim=-1).square_().mul_(inv_s.square())
        brier = sum_sq - 2.0 * true_scaled.exp() * inv_s + 1.0
        accumulator._accumulate(inv_s, correct, s.log() - true_scaled, brier, groups=groups)
        if accumulator.marginal:
            accumulator._accumulate_classes(e * inv_s.unsqueeze(-1), target)
