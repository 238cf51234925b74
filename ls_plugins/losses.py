"""Label smoothing and distillation losses (Müller, Kornblith & Hinton 2019, sections 1.1 and 4).

Pure torch: no fairseq import. The fairseq criteria and the vision trainer call these functions;
nothing else in the package re-derives a formula.

Notation: logits ``z`` of shape ``(..., K)``, integer ``target`` of shape ``(...)``,
``p = softmax(z)``, ``p(T) = softmax(z / T)``, ``y`` the one-hot target.

* Smoothed cross entropy:  ``H(y_LS, p)`` with ``y_LS = y (1 - alpha) + alpha * prior``; the
  uniform prior ``1/K`` over all ``K`` classes is the paper's ``y(1-a) + a/K`` (and
  ``torch.nn.functional.cross_entropy(label_smoothing=alpha)``).  The unigram prior spreads alpha
  in proportion to class frequencies (Pereyra et al. 2017).
* Distillation:  ``(1 - beta) H(y_LS, p) + beta * H(p^t(T), p(T))``  (paper section 4).
* Equivalent smoothing:  ``gamma = E[ sum_k (1 - y_k) p^t_k(T) K / (K - 1) ]``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("sum", "mean", "none")


def check_probability(name: str, value: float, *, upper_inclusive: bool) -> float:
    """Return ``value`` if it lies in [0, 1) (or [0, 1]); raise ``ValueError`` naming ``name``."""
    value = float(value)
    upper_ok = value <= 1.0 if upper_inclusive else value < 1.0
    if not (value >= 0.0 and upper_ok):  # also rejects nan
        bracket = "]" if upper_inclusive else ")"
        raise ValueError(f"{name} must be in [0, 1{bracket}, got {value}")
    return value


def check_temperature(name: str, value: float) -> float:
    """Return ``value`` if it is a finite number > 0; raise ``ValueError`` naming ``name``."""
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def unigram_prior(counts: Sequence[float] | Tensor) -> Tensor:
    """Class frequencies normalised to a distribution: ``prior_k = c_k / sum_j c_j``."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("unigram counts must be a 1-D vector of non-negative numbers with a positive sum")
    return (counts / counts.sum()).float()


def _padding_mask(target: Tensor, ignore_index: Optional[int]) -> Optional[Tensor]:
    return None if ignore_index is None else target.eq(ignore_index)


def _reduce(per_item: Tensor, pad_mask: Optional[Tensor], reduction: str) -> Tensor:
    if pad_mask is not None:
        per_item = per_item.masked_fill(pad_mask, 0.0)
    if reduction == "none":
        return per_item
    if reduction == "sum":
        return per_item.sum()
    if reduction == "mean":
        count = per_item.numel() if pad_mask is None else (~pad_mask).sum()
        return per_item.sum() / count
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def smoothed_nll_from_lprobs(lprobs: Tensor, target: Tensor, alpha: float = 0.0, *,
                             prior: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                             reduction: str = "sum") -> tuple[Tensor, Tensor]:
    """Smoothed cross entropy and plain NLL from log-probabilities.

    ``loss = (1 - alpha) * (-log p_y) + alpha * (-sum_k prior_k log p_k)``; returns ``(loss, nll)``
    with ``nll = -log p_y``, both reduced the same way; ignored positions contribute 0.
    """
    safe_target = target if ignore_index is None else target.masked_fill(target.eq(ignore_index), 0)
    nll = -lprobs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    pad_mask = _padding_mask(target, ignore_index)
    if alpha == 0.0:
        nll = _reduce(nll, pad_mask, reduction)
        return nll, nll
    if prior is None:
        smooth = -lprobs.mean(-1)
    else:
        smooth = -(lprobs @ prior.to(lprobs.dtype))
    loss = (1.0 - alpha) * nll + alpha * smooth
    return _reduce(loss, pad_mask, reduction), _reduce(nll, pad_mask, reduction)


def smoothed_cross_entropy(logits: Tensor, target: Tensor, alpha: float = 0.0, *,
                           prior: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                           reduction: str = "sum") -> Tensor:
    """Cross entropy against ``y (1 - alpha) + alpha * prior``; ``prior=None`` is uniform ``1/K``.

    With the uniform prior this equals
    ``F.cross_entropy(logits, target, label_smoothing=alpha, ignore_index=..., reduction=...)``.

    >>> logits = torch.tensor([[2.0, 0.0, -1.0]]); target = torch.tensor([0])
    >>> round(smoothed_cross_entropy(logits, target, 0.1).item(), 4)
    0.3365
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)
    return smoothed_nll_from_lprobs(lprobs, target, alpha, prior=prior,
                                    ignore_index=ignore_index, reduction=reduction)[0]


def tempered_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``p(T) = softmax(logits / T)`` in float32 or wider."""
    logits = logits.float()
    return F.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)


def soft_cross_entropy(student_logits: Tensor, teacher_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-position ``H(p^t(T), p(T)) = -sum_k p^t_k(T) log p_k(T)`` (no reduction).

    ``teacher_probs`` are already tempered teacher probabilities (e.g. an ensemble average, or a
    renormalised top-k cache); the student's logits are tempered here.
    """
    z = student_logits.float()
    lprobs = F.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)
    return -(teacher_probs.to(lprobs.dtype) * lprobs).sum(-1)


def distillation_loss(student_logits: Tensor, teacher_logits: Optional[Tensor], target: Tensor, *,
                      beta: float, temperature: float = 1.0, alpha: float = 0.0,
                      ignore_index: Optional[int] = None, reduction: str = "sum",
                      teacher_probs: Optional[Tensor] = None, scale_by_t2: bool = False) -> Tensor:
    """``(1 - beta) * H(y_LS(alpha), p) + beta * s * H(p^t(T), p(T))`` (paper section 4).

    ``s = 1`` is the paper's form (default); ``scale_by_t2=True`` uses ``s = T**2`` as Hinton et
    al. (2015) do to keep the soft term's gradients comparable across temperatures.  Pass either
    ``teacher_logits`` (tempered here) or ``teacher_probs`` (already tempered, e.g. an ensemble
    average or a top-k cache).
    """
    return distillation_terms(student_logits, teacher_logits, target, beta=beta,
                              temperature=temperature, alpha=alpha, ignore_index=ignore_index,
                              reduction=reduction, teacher_probs=teacher_probs,
                              scale_by_t2=scale_by_t2)[0]


def distillation_terms(student_logits: Tensor, teacher_logits: Optional[Tensor], target: Tensor, *,
                       beta: float, temperature: float = 1.0, alpha: float = 0.0,
                       ignore_index: Optional[int] = None, reduction: str = "sum",
                       teacher_probs: Optional[Tensor] = None,
                       scale_by_t2: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Like :func:`distillation_loss`, returning ``(loss, nll, soft)`` reduced the same way.

    ``nll = -log p_y`` at T = 1 and ``soft = H(p^t(T), p(T))`` (unscaled), for logging.
    """
    if teacher_probs is None:
        if teacher_logits is None:
            raise ValueError("distillation needs teacher_logits or teacher_probs")
        teacher_probs = tempered_probs(teacher_logits, temperature)
    lprobs = F.log_softmax(student_logits.float(), dim=-1)
    hard, nll = smoothed_nll_from_lprobs(lprobs, target, alpha, ignore_index=ignore_index,
                                         reduction="none")
    soft = soft_cross_entropy(student_logits, teacher_probs, temperature)
    scale = temperature ** 2 if scale_by_t2 else 1.0
    loss = (1.0 - beta) * hard + beta * scale * soft
    pad_mask = _padding_mask(target, ignore_index)
    return (_reduce(loss, pad_mask, reduction), _reduce(nll, pad_mask, reduction),
            _reduce(soft, pad_mask, reduction))


def incorrect_mass(teacher_probs: Tensor, target: Tensor, ignore_index: Optional[int] = None) -> tuple[float, int]:
    """``(sum over positions of sum_k (1 - y_k) p^t_k * K/(K-1), number of positions)``.

    The summable form of :func:`equivalent_smoothing` (for logging across batches and workers).
    """
    k = teacher_probs.size(-1)
    safe_target = target if ignore_index is None else target.masked_fill(target.eq(ignore_index), 0)
    p_true = teacher_probs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1).double()
    per_item = (1.0 - p_true) * (k / (k - 1))
    pad_mask = _padding_mask(target, ignore_index)
    if pad_mask is not None:
        per_item = per_item.masked_fill(pad_mask, 0.0)
        return float(per_item.sum()), int((~pad_mask).sum())
    return float(per_item.sum()), per_item.numel()


def equivalent_smoothing(teacher_logits: Tensor, target: Tensor, temperature: float = 1.0,
                         ignore_index: Optional[int] = None) -> float:
    """The teacher's equivalent label smoothing ``gamma = E[sum_k (1 - y_k) p^t_k(T) K/(K-1)]``.

    A teacher whose softmax is exactly ``y (1 - a) + a/K`` has ``gamma = a``; a one-hot teacher 0.
    """
    total, count = incorrect_mass(tempered_probs(teacher_logits, temperature), target, ignore_index)
    return total / max(count, 1)
