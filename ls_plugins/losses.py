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
  under any temperature by :func:`topk_teacher_from_log_probs` (see there for the tail).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cli import check_positive as check_temperature
from .cli import check_probability

REDUCTIONS = ("sum", "mean", "none")


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
    lprobs = F.log_softmax(logits.float(), dim=-1)
    return smoothed_nll_from_lprobs(lprobs, target, alpha, prior=prior,
                                    ignore_index=ignore_index, reduction=reduction)[0]


# --------------------------------------------------------------------------------------------
# Distillation (paper section 4; Hinton et al. 2015)
# --------------------------------------------------------------------------------------------

TAIL_MODES = ("uniform", "drop")


def _as_float(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 if it already is (half precision is widened, never narrowed)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _tempered_log_softmax(logits: Tensor, temperature: float) -> Tensor:
    z = _as_float(logits)
    return F.log_softmax(z if temperature == 1.0 else z / temperature, dim=-1)


def tempered_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``p(T) = softmax(logits / T)`` in float32 or wider."""
    z = _as_float(logits)
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


def topk_log_probs(log_probs: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(values, indices, tail_log_mass)``: the ``k`` largest log-probabilities (sorted,
    descending), their classes, and ``log(sum of the probabilities of the other K - k classes)``
    computed directly from those classes (no ``1 - sum`` cancellation; ``-inf`` when ``k == K``).
    """
    num_classes = log_probs.size(-1)
    if not 1 <= k <= num_classes:
        raise ValueError(f"top-k needs 1 <= k <= K={num_classes}, got {k}")
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
        raise ValueError(f"tail must be one of {', '.join(TAIL_MODES)}, got {tail!r}")
    values = _as_float(log_probs)
    k = values.size(-1)
    if tail_log_mass is None:
        total = torch.logsumexp(values, dim=-1)
        tail_log_mass = torch.where(total < 0, torch.log(-torch.expm1(total.clamp(max=0))),
                                    torch.full_like(total, -math.inf))
    tail_log_mass = tail_log_mass.to(values.dtype)
    if keep is not None and keep != k:
        if not 1 <= keep <= k:
            raise ValueError(f"keep must be in [1, {k}], got {keep}")
        tail_log_mass = torch.logsumexp(
            torch.cat([values[..., keep:], tail_log_mass.unsqueeze(-1)], dim=-1), dim=-1)
        values, indices, k = values[..., :keep], indices[..., :keep], keep
    if k > num_classes:
        raise ValueError(f"got {k} kept classes for K={num_classes}")
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
    values, indices, tail_log_mass = topk_log_probs(_as_float(teacher_log_probs), k)
    return topk_teacher_from_log_probs(values, indices, teacher_log_probs.size(-1),
                                       tail_log_mass=tail_log_mass, tail=tail)


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


class _Distillation(torch.autograd.Function):
    """Per position ``(loss, nll, soft)`` with ``loss = w_h H(y_LS, p) + w_s H(q, p(T))``, and
    the gradient written out instead of left to autograd.

    Values are those of :func:`smoothed_nll_from_lprobs` and :func:`_soft_ce_reference`.  The
    gradient with respect to the student's log-probabilities ``z`` (or logits, for the soft
    term alone) is, with upstream gradients ``g`` (loss), ``g_nll``, ``g_soft``::

        a = (w_s g + g_soft) / T,  b = w_h g
        dz_j = a (m p_j(T) - q_j) - b alpha / K - [j = y] (b (1 - alpha) + g_nll)

    (``m = sum_k q_k``, 1 up to rounding; a top-k teacher's ``q`` is its kept classes plus the
    even tail).  It is built in one ``(N, K)`` buffer, the one that held ``log p(T)``
    (tempered logits are normalised in place), instead of autograd's chain of fresh tensors
    (division, log_softmax, sum, gather and mean backwards, then their sum): on CPU those
    allocations cost as much as the arithmetic, and this is the part of a distillation step a
    top-k cache cannot avoid.  The teacher gets no gradient (callers use the autograd reference
    when it needs one).
    """

    @staticmethod
    def forward(ctx, z, normalized, temperature, probs, indices, tail, target, alpha,
                hard_weight, soft_weight, ignore_index):
        with torch.autocast(z.device.type, enabled=False):  # float32 math under AMP too
            return _Distillation._forward(ctx, z, normalized, temperature, probs, indices, tail,
                                          target, alpha, hard_weight, soft_weight, ignore_index)

    @staticmethod
    def _forward(ctx, z, normalized, temperature, probs, indices, tail, target, alpha,
                 hard_weight, soft_weight, ignore_index):
        if normalized and temperature == 1.0:  # log-probabilities already: log_softmax is a no-op
            lp, owned = z, False
        elif temperature == 1.0:
            lp, owned = torch.log_softmax(z, dim=-1), True
        else:
            zt = z * (1.0 / temperature)
            lp, owned = torch.log_softmax(zt, dim=-1, out=zt), True  # row-wise: safe in place
        probs = probs.to(lp.dtype)
        mass = probs.sum(-1)
        if indices is None:  # dense teacher
            soft = -torch.linalg.vecdot(probs, lp)
        else:
            kept = lp.gather(-1, indices)
            soft = -(probs * kept).sum(-1)
            if tail is not None:
                tail = tail.to(lp.dtype)
                mass = mass + (lp.size(-1) - indices.size(-1)) * tail
                soft = soft - tail * (lp.sum(-1) - kept.sum(-1))
        if target is None:
            nll = torch.zeros_like(soft)
            loss = soft * soft_weight
        else:
            hard, nll = smoothed_nll_from_lprobs(z, target, alpha, ignore_index=ignore_index,
                                                 reduction="none")
            if hard_weight == 0.0:
                loss = soft * soft_weight
            elif soft_weight == 0.0:
                loss = hard * hard_weight
            else:
                loss = hard * hard_weight + soft * soft_weight
        ctx.constants = (temperature, alpha, hard_weight, soft_weight)
        ctx.lp = lp if owned else None  # an intermediate buffer: the backward reuses it
        ctx.lp_used = False
        ctx.save_for_backward(z, mass, probs, indices, tail, target)
        if target is None:
            ctx.mark_non_differentiable(nll)
        return loss, nll, soft

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, g_nll, g_soft):
        with torch.autocast(g_loss.device.type, enabled=False):
            return _Distillation._backward(ctx, g_loss, g_nll, g_soft)

    @staticmethod
    def _backward(ctx, g_loss, g_nll, g_soft):
        z, mass, probs, indices, tail, target = ctx.saved_tensors
        temperature, alpha, hard_weight, soft_weight = ctx.constants
        if ctx.lp is None:                  # normalized input at T = 1: log p(T) is the input
            p = z.exp()
        elif not ctx.lp_used:               # our own buffer: p(T) in place
            p = ctx.lp.exp_()
            ctx.lp_used = True
        else:                               # a second backward (retain_graph): recompute
            zt = z * (1.0 / temperature) if temperature != 1.0 else z.clone()
            p = torch.log_softmax(zt, dim=-1, out=zt).exp_()
        a = g_loss * soft_weight
        if g_soft is not None:
            a = a + g_soft
        a = (a / temperature).to(p.dtype).unsqueeze(-1)          # (N, 1)
        out = p.mul_(mass.unsqueeze(-1) * a)
        row = None                                               # row constants to subtract
        if indices is None:
            out.addcmul_(probs, a, value=-1.0)
        else:
            kept = probs
            if tail is not None:
                row = tail.unsqueeze(-1) * a
                kept = probs - tail.unsqueeze(-1)
            out.scatter_add_(-1, indices, kept * -a)
        if target is not None:
            b = (g_loss * hard_weight).to(p.dtype).unsqueeze(-1)
            if alpha != 0.0:
                smooth = b * (alpha / z.size(-1))
                row = smooth if row is None else row + smooth
            at_target = b * (1.0 - alpha)
            if g_nll is not None:
                at_target = at_target + g_nll.to(p.dtype).unsqueeze(-1)
            out.scatter_add_(-1, target.unsqueeze(-1), -at_target)
        if row is not None:
            out.sub_(row)
        return out, None, None, None, None, None, None, None, None, None, None


def _teacher_parts(teacher):
    if isinstance(teacher, TopKTeacher):
        return teacher.probs, teacher.indices, teacher.tail
    return teacher, None, None


def _needs_autograd(teacher) -> bool:
    probs, _, tail = _teacher_parts(teacher)
    return probs.requires_grad or (tail is not None and tail.requires_grad)


def _flat(t: Optional[Tensor], width: bool = True) -> Optional[Tensor]:
    if t is None:
        return None
    return t.reshape(-1, t.size(-1)) if width else t.reshape(-1)


def _soft_ce(logits: Tensor, temperature: float, teacher, normalized: bool = False) -> Tensor:
    """``-sum_k q_k log p_k(T)`` per position for dense ``q`` or a :class:`TopKTeacher`.

    ``logits`` (or log-probabilities: the same up to a per-position constant) at T = 1;
    ``normalized``: they are log-probabilities (saves a ``log_softmax`` when T = 1).
    """
    logits = _as_float(logits)
    if _needs_autograd(teacher):
        return _soft_ce_reference(logits, temperature, teacher)
    probs, indices, tail = _teacher_parts(teacher)
    soft = _Distillation.apply(_flat(logits), bool(normalized), float(temperature), _flat(probs),
                               _flat(indices), _flat(tail, width=False), None, 0.0, 0.0, 1.0,
                               None)[2]
    return soft.reshape(logits.shape[:-1])


def soft_cross_entropy(student_logits: Tensor, teacher_probs, temperature: float = 1.0) -> Tensor:
    """Per-position ``H(p^t(T), p(T)) = -sum_k p^t_k(T) log p_k(T)`` (no reduction).

    ``teacher_probs`` are already tempered teacher probabilities (e.g. an ensemble average), dense
    ``(..., K)`` or a :class:`TopKTeacher`; the student's logits are tempered here.
    """
    check_temperature("temperature", temperature)
    return _soft_ce(student_logits, temperature, teacher_probs)


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
            raise ValueError("distillation needs teacher_logits or teacher_probs")
        teacher_probs = tempered_probs(teacher_logits, temperature)
    if student_lprobs is None:
        if student_logits is None:
            raise ValueError("distillation needs student_logits or student_lprobs")
        lprobs = _tempered_log_softmax(student_logits, 1.0)
    else:
        lprobs = _as_float(student_lprobs)
    scale = temperature ** 2 if scale_by_t2 else 1.0
    pad_mask = _padding_mask(target, ignore_index)
    if not _needs_autograd(teacher_probs):
        # one fused step; log-probabilities are logits too (the soft term re-tempers them)
        probs, indices, tail = _teacher_parts(teacher_probs)
        loss, nll, soft = _Distillation.apply(
            _flat(lprobs), True, float(temperature), _flat(probs), _flat(indices),
            _flat(tail, width=False), target.reshape(-1), float(alpha), 1.0 - beta,
            beta * scale, ignore_index)
        loss, nll, soft = (x.reshape(target.shape) for x in (loss, nll, soft))
        return (_reduce(loss, pad_mask, reduction), _reduce(nll, pad_mask, reduction),
                _reduce(soft, pad_mask, reduction))
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
        raise ValueError("equivalent smoothing needs K >= 2 classes")
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
