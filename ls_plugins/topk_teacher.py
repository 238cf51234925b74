"""Top-k teachers: a tempered teacher distribution kept as its ``k`` most probable classes.

A teacher cache (:mod:`ls_plugins.teacher_cache`) stores, per target position, the ``k`` largest
log-probabilities of the teacher at the cache temperature ``T_c``, their classes and the log of
the mass of the other ``K - k`` classes (:func:`topk_log_probs`).  :func:`topk_teacher_from_log_probs`
rebuilds the distribution at any temperature ``T`` (see there for the tail), and
:func:`topk_teacher` truncates a dense teacher the same way.  Pure torch.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .cli import bad_value
from .cli import check_positive as check_temperature
from .distillation_kernel import TeacherParts, float32_or_wider

TAIL_MODES = ("uniform", "drop")


class TopKTeacher(NamedTuple):
    """A tempered teacher distribution stored sparsely: ``k`` kept classes and an even tail.

    ``probs[..., i]`` is the teacher's probability of class ``indices[..., i]``; each of the other
    ``num_classes - k`` classes gets ``tail[...]`` (``tail is None``: the tail is empty, because
    ``k == K`` or the tail was dropped and ``probs`` renormalised).  Per position
    ``probs.sum(-1) + (K - k) * tail == 1``.  Built by :func:`topk_teacher` (from dense
    log-probabilities) or :func:`topk_teacher_from_log_probs` (from a cache).
    """
    probs: Tensor
    indices: Tensor
    tail: Optional[Tensor]
    num_classes: int

    def parts(self) -> TeacherParts:
        """The kernel's view of this teacher (:mod:`ls_plugins.distillation_kernel`)."""
        return TeacherParts(self.probs, self.indices, self.tail)


def topk_log_probs(log_probs: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(values, indices, tail_log_mass)``: the ``k`` largest log-probabilities (sorted,
    descending), their classes, and ``log(sum of the probabilities of the other K - k classes)``
    computed directly from those classes (no ``1 - sum`` cancellation; ``-inf`` when ``k == K``).
    """
    num_classes = log_probs.size(-1)
    if not 1 <= k <= num_classes:
        raise bad_value("k", f"must be an integer in [1, K={num_classes}]", k)
    values, indices = log_probs.topk(k, dim=-1)
    if k == num_classes:
        tail = torch.full(values.shape[:-1], -math.inf, dtype=values.dtype, device=values.device)
    else:
        tail = torch.logsumexp(log_probs.scatter(-1, indices, -math.inf), dim=-1)
    return values, indices, tail


def topk_teacher_from_log_probs(log_probs: Tensor, indices: Tensor, num_classes: int, *,
                                temperature: float = 1.0, source_temperature: float = 1.0,
                                tail_log_mass: Optional[Tensor] = None, tail: str = "uniform",
                                keep: Optional[int] = None) -> TopKTeacher:
    """Rebuild the teacher at temperature ``T`` from its top-k log-probabilities at ``T_c``.

    ``log_probs[..., i] = log p^t_{indices_i}(T_c)`` for the ``k`` kept classes (a single teacher's
    ``z_i / T_c`` up to a per-position constant) and ``tail_log_mass = log(1 - sum_i p^t_i(T_c))``,
    the mass of the ``K - k`` other classes (derived from ``log_probs`` when omitted).
    ``keep`` (<= k) keeps only the first ``keep`` entries (sorted input) and folds the rest into
    the tail.  Under ``T`` the kept classes get logits ``(T_c / T) log p^t_i(T_c)``; the tail:

    * ``"uniform"``: the ``K - k`` other classes get equal logits
      ``(T_c / T) (tail_log_mass - log(K - k))``, i.e. the tail mass at ``T_c`` spread evenly.
      Exact for the kept classes and the tail's total when ``T == T_c``; at ``T > T_c`` the
      tail's mass is over-estimated, at ``T < T_c`` under-estimated (Jensen).
    * ``"drop"``: the tail is dropped and the kept classes renormalised,
      ``p_i(T) = softmax_i((T_c / T) log p^t(T_c))`` over the ``k`` kept classes only.

    Both are exact for ``k == K`` (for a single teacher, at any ``T``).  Computed in float32 or
    wider.
    """
    check_temperature("temperature", temperature)
    check_temperature("source_temperature", source_temperature)
    if tail not in TAIL_MODES:
        raise bad_value("tail", f"must be one of {', '.join(TAIL_MODES)}", repr(tail))
    values = float32_or_wider(log_probs)
    k = values.size(-1)
    if tail_log_mass is None:
        total = torch.logsumexp(values, dim=-1)
        tail_log_mass = torch.where(total < 0, torch.log(-torch.expm1(total.clamp(max=0))),
                                    torch.full_like(total, -math.inf))
    tail_log_mass = tail_log_mass.to(values.dtype)
    if keep is not None and keep != k:
        if not 1 <= keep <= k:
            raise bad_value("keep", f"must be an integer in [1, {k}] (the kept classes)", keep)
        tail_log_mass = torch.logsumexp(
            torch.cat([values[..., keep:], tail_log_mass.unsqueeze(-1)], dim=-1), dim=-1)
        values, indices, k = values[..., :keep], indices[..., :keep], keep
    if k > num_classes:
        raise bad_value("log_probs", f"must hold at most K={num_classes} classes per position", k)
    factor = source_temperature / temperature
    scaled = values if factor == 1.0 else values * factor
    if k == num_classes or tail == "drop":
        return TopKTeacher(torch.softmax(scaled, dim=-1), indices.long(), None, num_classes)
    n_tail = num_classes - k
    tail_logit = (tail_log_mass - math.log(n_tail)) * factor
    log_z = torch.logsumexp(torch.cat([scaled, (tail_logit + math.log(n_tail)).unsqueeze(-1)],
                                      dim=-1), dim=-1)
    return TopKTeacher(torch.exp(scaled - log_z.unsqueeze(-1)), indices.long(),
                       torch.exp(tail_logit - log_z), num_classes)


def topk_teacher(teacher_log_probs: Tensor, k: int, *, tail: str = "uniform") -> TopKTeacher:
    """Truncate dense, already tempered teacher log-probabilities to their top ``k`` classes.

    Identical (same function) to what a top-k cache built at the same temperature gives.
    """
    values, indices, tail_log_mass = topk_log_probs(float32_or_wider(teacher_log_probs), k)
    return topk_teacher_from_log_probs(values, indices, teacher_log_probs.size(-1),
                                       tail_log_mass=tail_log_mass, tail=tail)
