"""The hand-written autograd kernel behind the distillation loss (pure torch).

Per row ``n`` of scores ``z`` (``N x K``: logits, or log-probabilities with ``log_probs=True``),
with ``p = softmax(z)``, ``p(T) = softmax(z / T)``, a target ``y`` and a teacher distribution
``q`` (dense, or top-k with an even tail; ``m = sum_k q_k``, 1 up to rounding)::

    nll  = -log p_y
    hard = (1 - alpha) * nll - alpha * sum_k prior_k log p_k        (prior: uniform 1/K by default)
    soft = -sum_k q_k log p_k(T)
    loss = w_hard * hard + w_soft * soft

:func:`distillation_rows` returns ``(loss, nll, soft)`` per row and differentiates them with a
gradient written out instead of left to autograd.  With upstream gradients ``g`` (loss),
``g_nll`` and ``g_soft``, ``a = (w_soft g + g_soft) / T`` and ``b = w_hard g``::

    dz_j = a (m p_j(T) - q_j) + c p_j - b alpha prior_j - [j = y] (b (1 - alpha) + g_nll)

where ``c = b + g_nll`` for logits and ``c = 0`` for log-probabilities (their own ``log_softmax``
lies outside the kernel, in the caller's graph; the soft term is invariant to a per-row shift of
``z``, so its gradient is the same for both).  The gradient is built in one ``(N, K)`` buffer,
the one that held ``log p(T)`` (normalised in place), instead of autograd's chain of fresh
tensors (division, log_softmax, sum, gather and mean backwards, then their sum): on CPU those
allocations cost as much as the arithmetic, and this is the part of a distillation step that a
top-k teacher cache cannot avoid.  The math runs in float32 (float64 stays float64), also under
autocast.  The teacher gets no gradient.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .cli import bad_value


def float32_or_wider(x: Tensor) -> Tensor:
    """``x`` in float32, or as it is if it is float64 (half precision is widened, never narrowed)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class TeacherParts(NamedTuple):
    """A teacher distribution ``q`` per row, in the kernel's terms.

    Dense: ``probs`` is ``(..., K)`` and ``indices`` and ``tail`` are ``None``.  Top-k:
    ``probs[..., i]`` is the probability of class ``indices[..., i]`` (``(..., k)``, long) and
    each of the other ``K - k`` classes has probability ``tail[...]`` (``None``: 0).
    """
    probs: Tensor
    indices: Optional[Tensor] = None
    tail: Optional[Tensor] = None


class LossWeights(NamedTuple):
    """``loss = hard * H(y_LS(alpha), p) + soft * H(q, p(T))``."""
    hard: float = 1.0
    soft: float = 0.0
    alpha: float = 0.0


class RowLosses(NamedTuple):
    """Per-row terms: ``loss`` (weighted sum), ``nll = -log p_y`` and the unweighted ``soft``."""
    loss: Tensor
    nll: Tensor
    soft: Tensor


class _Settings(NamedTuple):  # the kernel's non-tensor arguments
    weights: LossWeights
    temperature: float
    ignore_index: Optional[int]
    log_probs: bool


def distillation_rows(z: Tensor, target: Optional[Tensor] = None,
                      teacher: Optional[TeacherParts] = None, *,
                      weights: LossWeights = LossWeights(), temperature: float = 1.0,
                      prior: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                      log_probs: bool = False) -> RowLosses:
    """Per-row ``(loss, nll, soft)`` of ``z`` (``(..., K)``), shaped ``z.shape[:-1]``.

    ``target`` (``z.shape[:-1]``, long): the hard term's classes (``None``: no hard term, ``nll``
    is 0 and not differentiable).  ``teacher``: the soft term's ``q`` (``None``: ``soft`` is 0).
    ``log_probs=True``: ``z`` holds log-probabilities at ``T = 1`` (saves a ``log_softmax``
    when ``T = 1``; the soft term re-tempers them).  ``prior``: ``(K,)``, where the hard term's
    smoothing mass goes (``None``: uniform).  Rows whose target equals ``ignore_index`` (any
    integer, inside ``[0, K)`` or not) give 0 in all three terms and get no gradient.  Weights,
    ``alpha`` and ``T`` are not validated here (the callers in :mod:`ls_plugins.losses` do that);
    a teacher that needs gradients must go through autograd instead (``UsageError``).
    """
    if target is None and teacher is None:
        raise bad_value("target", "must be given when teacher is None (no term left)", None)
    if teacher is not None and (teacher.probs.requires_grad or
                                (teacher.tail is not None and teacher.tail.requires_grad)):
        raise bad_value("teacher", "must not require gradients (the kernel gives it none; use "
                        "autograd)", "probabilities that require grad")
    z = float32_or_wider(z)
    num_classes = z.size(-1)

    def rows(t: Optional[Tensor], width: bool = True) -> Optional[Tensor]:
        return None if t is None else (t.reshape(-1, t.size(-1)) if width else t.reshape(-1))

    if teacher is not None:
        teacher = TeacherParts(rows(teacher.probs), rows(teacher.indices),
                               rows(teacher.tail, width=False))
    settings = _Settings(LossWeights(*(float(w) for w in weights)), float(temperature),
                         ignore_index, bool(log_probs))
    loss, nll, soft = _DistillationFunction.apply(
        z.reshape(-1, num_classes), rows(target, width=False), teacher, prior, settings)
    return RowLosses(*(x.reshape(z.shape[:-1]) for x in (loss, nll, soft)))


class _DistillationFunction(torch.autograd.Function):
    """``apply(z, target, teacher, prior, settings)`` on ``(N, K)`` rows; see the module doc."""

    @staticmethod
    def forward(ctx, z, target, teacher, prior, settings):
        with torch.autocast(z.device.type, enabled=False):  # float32 math under AMP too
            return _forward(ctx, z, target, teacher, prior, settings)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, g_nll, g_soft):
        with torch.autocast(g_loss.device.type, enabled=False):
            return _backward(ctx, g_loss, g_nll, g_soft), None, None, None, None


def _log_softmax(z: Tensor, temperature: float) -> Tensor:
    """``log_softmax(z / T)`` in a fresh buffer (normalised in place when ``T != 1``)."""
    if temperature == 1.0:
        return torch.log_softmax(z, dim=-1)
    zt = z * (1.0 / temperature)
    return torch.log_softmax(zt, dim=-1, out=zt)  # row-wise: safe in place


def _forward(ctx, z, target, teacher, prior, settings: _Settings):
    weights, temperature = settings.weights, settings.temperature
    num_classes = z.size(-1)
    # log p at T = 1 (hard term) and log p(T) (soft term); "owned": a buffer of ours
    lp1 = lp_t = None
    owned = set()
    if target is not None:
        if settings.log_probs:
            lp1 = z
        else:
            lp1 = _log_softmax(z, 1.0)
            owned.add("lp1")
    if teacher is not None:
        if temperature == 1.0 and lp1 is not None:
            lp_t = lp1
        elif temperature == 1.0 and settings.log_probs:
            lp_t = z
        else:
            lp_t = _log_softmax(z, temperature)
            owned.add("lp_t")

    mass = soft = None
    probs, indices, tail = teacher if teacher is not None else (None, None, None)
    if teacher is not None:
        probs = probs.to(lp_t.dtype)
        mass = probs.sum(-1)
        if indices is None:  # dense teacher
            soft = -torch.linalg.vecdot(probs, lp_t)
        else:
            kept = lp_t.gather(-1, indices)
            soft = -(probs * kept).sum(-1)
            if tail is not None:
                tail = tail.to(lp_t.dtype)
                mass = mass + (num_classes - indices.size(-1)) * tail
                soft = soft - tail * (lp_t.sum(-1) - kept.sum(-1))

    ignored = safe_target = None
    if target is None:
        nll = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        loss = soft * weights.soft
    else:
        safe_target = target
        if settings.ignore_index is not None:
            ignored = target.eq(settings.ignore_index)
            if not 0 <= settings.ignore_index < num_classes:  # gather/scatter need a class
                safe_target = target.masked_fill(ignored, 0)
        nll = -lp1.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
        hard = nll
        if weights.alpha != 0.0:
            if prior is None:
                smooth = lp1.sum(-1).div_(-num_classes)
            else:
                smooth = -(lp1 @ prior.to(lp1.dtype))
            hard = (1.0 - weights.alpha) * nll + weights.alpha * smooth
        if soft is None or weights.soft == 0.0:
            loss = hard * weights.hard
        elif weights.hard == 0.0:
            loss = soft * weights.soft
        else:
            loss = hard * weights.hard + soft * weights.soft
    if soft is None:
        soft = torch.zeros_like(nll)
    if ignored is not None:
        for term in (loss, nll, soft):
            term.masked_fill_(ignored, 0.0)

    ctx.settings = settings
    ctx.lp1 = lp1 if "lp1" in owned else None  # buffers the backward turns into p in place
    ctx.lp_t = lp_t if "lp_t" in owned else None
    ctx.buffers_used = False
    ctx.has_teacher = teacher is not None
    ctx.save_for_backward(z, mass, probs, indices, tail, safe_target, ignored, prior)
    if target is None:
        ctx.mark_non_differentiable(nll)
    if teacher is None:
        ctx.mark_non_differentiable(soft)
    return loss, nll, soft


def _probabilities(ctx, z, owned: Optional[Tensor], temperature: float) -> Tensor:
    """``softmax(z / T)``: in place in our forward buffer the first time, else recomputed."""
    if owned is not None and not ctx.buffers_used:
        return owned.exp_()
    if ctx.settings.log_probs and temperature == 1.0:
        return z.exp()  # z are log-probabilities
    return _log_softmax(z, temperature).exp_()  # a second backward (retain_graph)


def _backward(ctx, g_loss, g_nll, g_soft):
    z, mass, probs, indices, tail, target, ignored, prior = ctx.saved_tensors
    settings = ctx.settings
    weights, temperature = settings.weights, settings.temperature
    dtype = z.dtype
    has_target = target is not None

    def column(x: Tensor) -> Tensor:  # (N,) upstream values -> (N, 1), zero on ignored rows
        x = x.to(dtype)
        if ignored is not None:
            x = x.masked_fill(ignored, 0.0)
        return x.unsqueeze(-1)

    a = None  # soft term: d/dz = a (m p(T) - q)
    if ctx.has_teacher:
        a = g_loss * weights.soft
        if g_soft is not None:
            a = a + g_soft
        a = column(a / temperature)
    b = column(g_loss * weights.hard) if has_target else None
    nll_grad = column(g_nll) if has_target and g_nll is not None else None
    c = None  # the hard term's softmax part: (b + g_nll) p, for logits only
    if has_target and not settings.log_probs:
        c = b if nll_grad is None else b + nll_grad

    # the p-proportional part, in a buffer of the forward when there is one
    same_p = temperature == 1.0 or c is None or a is None
    if a is not None:
        p_t = _probabilities(ctx, z, ctx.lp_t if ctx.lp_t is not None else ctx.lp1, temperature)
        coefficient = mass.unsqueeze(-1) * a
        if c is not None and same_p:
            coefficient = coefficient + c
        out = p_t.mul_(coefficient)
        if c is not None and not same_p:
            out.addcmul_(_probabilities(ctx, z, ctx.lp1, 1.0), c)
    elif c is not None:
        out = _probabilities(ctx, z, ctx.lp1, 1.0).mul_(c)
    else:
        out = torch.zeros_like(z)
    ctx.buffers_used = True

    row = None  # a constant per row, subtracted at the end
    if a is not None:
        if indices is None:
            out.addcmul_(probs, a, value=-1.0)
        else:
            kept = probs
            if tail is not None:
                row = tail.unsqueeze(-1) * a
                kept = probs - tail.unsqueeze(-1)
            out.scatter_add_(-1, indices, kept * -a)
    if has_target:
        if weights.alpha != 0.0:
            if prior is None:
                smooth = b * (weights.alpha / z.size(-1))
                row = smooth if row is None else row + smooth
            else:
                out.addr_(b.squeeze(-1), prior.to(dtype), alpha=-weights.alpha)
        at_target = b * (1.0 - weights.alpha)
        if nll_grad is not None:
            at_target = at_target + nll_grad
        out.scatter_add_(-1, target.unsqueeze(-1), -at_target)
    if row is not None:
        out.sub_(row)
    return out
