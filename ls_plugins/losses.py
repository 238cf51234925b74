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
* Top-k teachers (a teacher cache): the ``k`` most probable classes plus the tail's mass, rebuilt
  under any temperature by :func:`topk_teacher_from_log_probs` (see there for the tail); they
  live in :mod:`ls_plugins.topk_teacher` and are importable from here.

The distillation terms are computed, and differentiated, by the hand-written kernel of
:mod:`ls_plugins.distillation_kernel` when the teacher needs no gradient, else by plain autograd.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cli import bad_value, check_probability
from .cli import check_positive as check_temperature
from .distillation_kernel import LossWeights, TeacherParts, distillation_rows, float32_or_wider
from .topk_teacher import (TAIL_MODES, TopKTeacher, topk_log_probs, topk_teacher,  # noqa: F401
                           topk_teacher_from_log_probs)

REDUCTIONS = ("sum", "mean", "none")


def unigram_prior(counts: Sequence[float] | Tensor) -> Tensor:
    """Class frequencies normalised to a distribution: ``prior_k = c_k / sum_j c_j``."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise bad_value("counts", "must be a 1-D vector of non-negative numbers with a positive sum",
                        f"shape {tuple(counts.shape)}, sum {float(counts.sum())}, "
                        f"minimum {float(counts.min()) if counts.numel() else 'none'}")
    return (counts / counts.sum()).float()


def _padding_mask(target: Tensor, ignore_index: Optional[int]) -> Optional[Tensor]:
    return None if ignore_index is None else target.eq(ignore_index)


def _reduce(per_item: Tensor, pad_mask: Optional[Tensor], reduction: str, *,
            zeroed: bool = False) -> Tensor:
    """Sum, mean over the non-padding positions, or ``none`` (padding set to 0); ``zeroed``: the
    padding positions hold 0 already."""
    if pad_mask is not None and not zeroed:
        per_item = per_item.masked_fill(pad_mask, 0.0)
    if reduction == "none":
        return per_item
    if reduction == "sum":
        return per_item.sum()
    if reduction == "mean":
        count = per_item.numel() if pad_mask is None else (~pad_mask).sum()
        return per_item.sum() / count
    raise bad_value("reduction", f"must be one of {', '.join(REDUCTIONS)}", repr(reduction))


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
        smooth = lprobs.sum(-1).div_(-lprobs.size(-1))  # sum, not mean: its backward is a view
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
    check_probability("alpha", alpha, upper_inclusive=False)
    lprobs = F.log_softmax(float32_or_wider(logits), dim=-1)
    return smoothed_nll_from_lprobs(lprobs, target, alpha, prior=prior,
                                    ignore_index=ignore_index, reduction=reduction)[0]


# --------------------------------------------------------------------------------------------
# Distillation (paper section 4; Hinton et al. 2015)
# --------------------------------------------------------------------------------------------

def _tempered_log_softmax(logits: Tensor, temperature: float) -> Tensor:
    z = float32_or_wider(logits)
    return F.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)


def tempered_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``p(T) = softmax(logits / T)`` in float32 or wider."""
    z = float32_or_wider(logits)
    return F.softmax(z if temperature == 1.0 else z / temperature, dim=-1)


def tempered_log_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``log p(T) = log_softmax(logits / T)`` in float32 or wider."""
    return _tempered_log_softmax(logits, temperature)


def log_mean_probs(log_probs: Sequence[Tensor]) -> Tensor:
    """``log((1/M) sum_m exp(log_probs_m))``: an ensemble's averaged probabilities, in log space.

    fairseq's ensembles average probabilities (not log-probabilities or logits); so do ours.
    """
    if len(log_probs) == 1:
        return log_probs[0]
    return torch.logsumexp(torch.stack(list(log_probs)), dim=0) - math.log(len(log_probs))


def ensemble_tempered_log_probs(logits: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """``log((1/M) sum_m p^m(T))``: the log of the average of M models' tempered probabilities.

    An ensemble teacher's ``p^t(T)`` (probabilities are averaged after tempering, so an
    ensemble's average cannot be re-tempered afterwards).  One model: ``log_softmax(z / T)``.
    """
    return log_mean_probs([_tempered_log_softmax(z, temperature) for z in logits])


def _soft_ce_reference(logits: Tensor, temperature: float, teacher) -> Tensor:
    """``-sum_k q_k log p_k(T)`` per position, by plain autograd (any teacher, double backward)."""
    lprobs_t = _tempered_log_softmax(logits, temperature)
    if isinstance(teacher, TopKTeacher):
        kept = lprobs_t.gather(-1, teacher.indices)
        soft = -(teacher.probs.to(lprobs_t.dtype) * kept).sum(-1)
        if teacher.tail is not None:
            # the tail classes each get `tail`: - tail * (sum over all classes - sum over kept)
            soft = soft - teacher.tail.to(lprobs_t.dtype) * (lprobs_t.sum(-1) - kept.sum(-1))
        return soft
    return -(teacher.to(lprobs_t.dtype) * lprobs_t).sum(-1)


def _teacher_parts(teacher) -> TeacherParts:
    """A dense probability tensor or a :class:`TopKTeacher`, as the kernel takes it."""
    return teacher.parts() if isinstance(teacher, TopKTeacher) else TeacherParts(teacher)


def _needs_autograd(teacher) -> bool:
    parts = _teacher_parts(teacher)
    return parts.probs.requires_grad or (parts.tail is not None and parts.tail.requires_grad)


def soft_cross_entropy(student_logits: Tensor, teacher_probs, temperature: float = 1.0) -> Tensor:
    """Per-position ``H(p^t(T), p(T)) = -sum_k p^t_k(T) log p_k(T)`` (no reduction).

    ``teacher_probs`` are already tempered teacher probabilities (e.g. an ensemble average), dense
    ``(..., K)`` or a :class:`TopKTeacher`; the student's logits are tempered here.
    """
    check_temperature("temperature", temperature)
    logits = float32_or_wider(student_logits)
    if _needs_autograd(teacher_probs):
        return _soft_ce_reference(logits, temperature, teacher_probs)
    return distillation_rows(logits, teacher=_teacher_parts(teacher_probs),
                             weights=LossWeights(hard=0.0, soft=1.0),
                             temperature=temperature).soft


def distillation_loss(student_logits: Tensor, teacher_logits: Optional[Tensor], target: Tensor, *,
                      beta: float, temperature: float = 1.0, alpha: float = 0.0,
                      ignore_index: Optional[int] = None, reduction: str = "sum",
                      teacher_probs=None, scale_by_t2: bool = False) -> Tensor:
    """``(1 - beta) * H(y_LS(alpha), p) + beta * s * H(p^t(T), p(T))`` (paper section 4).

    ``H(y_LS, p)`` is :func:`smoothed_cross_entropy` at ``T = 1`` (the paper's hard-target term,
    optionally label-smoothed); ``p(T) = softmax(z / T)`` for student and teacher alike.
    ``s = 1`` is the paper's form (default); ``scale_by_t2=True`` uses ``s = T**2`` as Hinton et
    al. (2015) do, so that the soft term's gradients keep their size when ``T`` changes (they
    scale as ``1/T**2``).  Pass either ``teacher_logits`` (tempered here) or ``teacher_probs``
    (already tempered: an ensemble average, or a :class:`TopKTeacher`).  Padding positions
    (``target == ignore_index``) contribute 0.

    >>> s = torch.tensor([[2.0, 0.0, -1.0]]); t = torch.tensor([[1.0, 1.0, -1.0]])
    >>> y = torch.tensor([0])
    >>> round(distillation_loss(s, t, y, beta=0.5, temperature=2.0).item(), 4)
    0.6448
    """
    return distillation_terms(student_logits, teacher_logits, target, beta=beta,
                              temperature=temperature, alpha=alpha, ignore_index=ignore_index,
                              reduction=reduction, teacher_probs=teacher_probs,
                              scale_by_t2=scale_by_t2)[0]


def distillation_terms(student_logits: Optional[Tensor], teacher_logits: Optional[Tensor],
                       target: Tensor, *, beta: float, temperature: float = 1.0,
                       alpha: float = 0.0, ignore_index: Optional[int] = None,
                       reduction: str = "sum", teacher_probs=None, scale_by_t2: bool = False,
                       student_lprobs: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """Like :func:`distillation_loss`, returning ``(loss, nll, soft)`` reduced the same way.

    ``nll = -log p_y`` at T = 1 and ``soft = H(p^t(T), p(T))`` (unscaled: without ``beta`` and
    ``T**2``), for logging.  ``student_lprobs``: ``log_softmax(student_logits)`` if the caller
    already has it (it is then not recomputed; ``student_logits`` may be ``None``, since
    log-probabilities are logits too).
    """
    check_probability("beta", beta, upper_inclusive=True)
    check_temperature("temperature", temperature)
    check_probability("alpha", alpha, upper_inclusive=False)
    if teacher_probs is None:
        if teacher_logits is None:
            raise bad_value("teacher_probs", "must be given when teacher_logits is None", None)
        teacher_probs = tempered_probs(teacher_logits, temperature)
    if student_lprobs is None:
        if student_logits is None:
            raise bad_value("student_lprobs", "must be given when student_logits is None", None)
        lprobs = _tempered_log_softmax(student_logits, 1.0)
    else:
        lprobs = float32_or_wider(student_lprobs)
    scale = temperature ** 2 if scale_by_t2 else 1.0
    pad_mask = _padding_mask(target, ignore_index)
    if not _needs_autograd(teacher_probs):
        # one fused step; log-probabilities are logits too (the soft term re-tempers them)
        rows = distillation_rows(  # ignored rows are 0 in all three terms
            lprobs, target, _teacher_parts(teacher_probs), log_probs=True,
            weights=LossWeights(hard=1.0 - beta, soft=beta * scale, alpha=alpha),
            temperature=temperature, ignore_index=ignore_index)
        return tuple(_reduce(x, pad_mask, reduction, zeroed=True) for x in rows)
    hard, nll = smoothed_nll_from_lprobs(lprobs, target, alpha, ignore_index=ignore_index,
                                         reduction="none")
    soft = _soft_ce_reference(lprobs, temperature, teacher_probs)
    if beta == 0.0:
        loss = hard
    elif beta == 1.0:
        loss = soft * scale if scale != 1.0 else soft
    else:
        loss = (1.0 - beta) * hard + (beta * scale) * soft
    return (_reduce(loss, pad_mask, reduction), _reduce(nll, pad_mask, reduction),
            _reduce(soft, pad_mask, reduction))


def incorrect_mass(teacher_probs, target: Tensor,
                   ignore_index: Optional[int] = None) -> tuple[float, int]:
    """``(sum over positions of sum_k (1 - y_k) p^t_k * K/(K-1), number of positions)``.

    The summable form of :func:`equivalent_smoothing` (for logging across batches and workers).
    ``teacher_probs``: dense tempered probabilities ``(..., K)`` or a :class:`TopKTeacher`
    (then ``gamma`` is that of the distribution the student is trained against).
    """
    safe_target = target if ignore_index is None else target.masked_fill(target.eq(ignore_index), 0)
    if isinstance(teacher_probs, TopKTeacher):
        num_classes = teacher_probs.num_classes
        hit = teacher_probs.indices.eq(safe_target.unsqueeze(-1))
        p_true = (teacher_probs.probs.double() * hit).sum(-1)
        if teacher_probs.tail is not None:
            p_true = p_true + teacher_probs.tail.double() * (~hit.any(-1))
    else:
        num_classes = teacher_probs.size(-1)
        p_true = teacher_probs.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1).double()
    if num_classes < 2:
        raise bad_value("teacher_probs", "must have K >= 2 classes (equivalent smoothing)",
                        num_classes)
    per_item = (1.0 - p_true) * (num_classes / (num_classes - 1))
    pad_mask = _padding_mask(target, ignore_index)
    if pad_mask is not None:
        per_item = per_item.masked_fill(pad_mask, 0.0)
        return float(per_item.sum()), int((~pad_mask).sum())
    return float(per_item.sum()), per_item.numel()


def equivalent_smoothing(teacher_logits: Tensor, target: Tensor, temperature: float = 1.0,
                         ignore_index: Optional[int] = None) -> float:
    """The teacher's equivalent label smoothing ``gamma = E[sum_k (1 - y_k) p^t_k(T) K/(K-1)]``.

    The mean, over non-ignored positions, of the teacher's tempered mass on incorrect classes,
    rescaled by ``K/(K-1)`` so that a teacher whose softmax is exactly ``y (1 - a) + a/K`` has
    ``gamma = a``; a one-hot teacher has 0 (paper section 4).

    >>> K, a = 5, 0.2; y = torch.tensor([3])
    >>> probs = torch.full((1, K), a / K); probs[0, 3] += 1 - a
    >>> round(equivalent_smoothing(probs.log(), y), 6)
    0.2
    """
    check_temperature("temperature", temperature)
    total, count = incorrect_mass(tempered_probs(teacher_logits, temperature), target, ignore_index)
    return total / max(count, 1)


_LINEAR_LOSSES = ("linear_smoothed_cross_entropy", "linear_distillation_terms")


def __getattr__(name: str):
    """The losses fused with a linear output layer (:mod:`ls_plugins.linear_losses`), importable
    from here too; loaded on first use, because that module imports this one."""
    if name in _LINEAR_LOSSES:
        from . import linear_losses
        return getattr(linear_losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
