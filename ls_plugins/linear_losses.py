"""Smoothed cross entropy and top-k distillation fused with a linear output layer (large K).

For hidden states ``h`` (``N x d``), an output layer ``W`` (``K x d``) and ``b`` (``K``) and the
logits ``z = h W^T + b``, :func:`linear_smoothed_cross_entropy` equals
``smoothed_cross_entropy(z, ...)`` and :func:`linear_distillation_terms` equals
``distillation_terms(z, ...)`` (:mod:`ls_plugins.losses`), in value and in their gradients with
respect to ``h``, ``W`` and ``b``, without ever holding the ``N x K`` logits: tokens are taken in
chunks of rows, and one ``chunk x K`` buffer holds the chunk's logits, then their exponentials,
then their gradient.  Per token (``p = softmax(z)``, ``p(T) = softmax(z / T)``)::

    hard = lse(z) - (1 - alpha) z_y - alpha prior.z          prior.z = h.(W^T prior) + b.prior
    soft = m lse(z / T) - (1/T) q.z                          q.z = sum_i (q_i - t) z_{c_i} + t 1.z
    loss = w_h hard + w_s soft                               (w_h, w_s) = (1 - beta, beta s)

with the teacher ``q`` a :class:`~ls_plugins.losses.TopKTeacher` (classes ``c_i`` kept with
``q_i``, every other class ``t``, ``m = sum_k q_k``) and ``1.z = h.(sum_k W_k) + sum_k b_k``.
The gradient with respect to a token's logits, scaled by the upstream gradient ``g``, is::

    dz = g w_h (p - (1 - alpha) e_y) + g (w_s / T) (m p(T) - sum_i (q_i - t) e_{c_i})
         - (g w_h alpha) prior - (g w_s t / T) 1

whose last two terms are rank one (a number per token times a fixed vector over the classes):
they reach ``dh = dz W``, ``dW = dz^T h`` and ``db = sum dz`` through ``W^T prior`` and
``sum_k W_k``, so smoothing and the teacher's tail cost no pass over the vocabulary.

When the loss is reduced to a number (``"sum"``, ``"mean"``) and a gradient is needed, the
gradients are computed in the forward pass (the upstream gradient is then a single number that
the backward pass multiplies in), so the logits are computed once; with ``reduction="none"`` the
backward pass recomputes them chunk by chunk.  Math is float32 (float64 when an input is
float64), under autocast too; gradients come back in the inputs' dtypes.  The vocabulary is not
split: a chunk of ``CHUNK_BYTES / (K * 4)`` tokens bounds the buffer (256 tokens at K = 128k).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .cli import bad_value, check_probability
from .cli import check_positive as check_temperature
from .losses import REDUCTIONS, _padding_mask, _reduce, distillation_terms
from .topk_teacher import TopKTeacher

CHUNK_BYTES = 128 * 2**20  # the chunk x K buffer: bounds the memory the loss needs beyond h, W


class LinearLossTerms(NamedTuple):
    """The reduced loss, plain NLL ``-log p_y`` and soft term ``H(q, p(T))`` (unscaled), and the
    arg-max class of every position (for accuracy; ``None`` unless asked for).  Only ``loss``
    carries a gradient."""
    loss: Tensor
    nll: Tensor
    soft: Tensor
    predicted: Optional[Tensor]


class _Spec(NamedTuple):
    alpha: float
    hard_weight: float
    soft_weight: float
    temperature: float
    ignore_index: Optional[int]
    reduction: str
    chunk_size: int
    predict: bool


class _OutputLayer:
    """``W``, ``b`` in the compute dtype and their rank-one directions ``W^T v``, ``b.v`` for
    the smoothing prior (``prior=None``: uniform) and, for a teacher's tail, all ones.

    ``prior_mass`` is ``sum_k prior_k`` as given (a float32 prior sums to 1 only up to
    rounding; the unfused loss uses it as it is)."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor], prior: Optional[Tensor],
                 dtype: torch.dtype, smoothing: bool, tail: bool):
        self.weight = weight.to(dtype)
        self.bias = None if bias is None else bias.to(dtype)
        self.prior, self.prior_mass = None, 1.0
        if smoothing and prior is None:
            self.prior = self.weight.new_full((weight.size(0),), 1.0 / weight.size(0))
        elif smoothing:
            self.prior = prior.to(dtype)
            self.prior_mass = self.prior.sum()
        self.w_prior, self.b_prior = self._direction(self.prior)
        self.w_ones, self.b_ones = self._direction(
            torch.ones_like(self.weight[:, 0]) if tail else None)

    def _direction(self, v: Optional[Tensor]):
        if v is None:
            return None, None
        return v @ self.weight, (0.0 if self.bias is None else v @ self.bias)

    def logits(self, h: Tensor) -> Tensor:
        if self.bias is None:
            return h @ self.weight.t()
        return torch.addmm(self.bias, h, self.weight.t())


def _sub_outer(out: Tensor, u: Tensor, v: Tensor) -> None:
    """``out -= u v^T`` (a rank-one matrix product: BLAS, unlike ``addr_`` on CPU)."""
    out.addmm_(u.unsqueeze(1), v.unsqueeze(0), alpha=-1.0)


class _Gradients:
    """``dh``, ``dW``, ``db`` accumulated over chunks; rank-one parts folded in at the end."""

    def __init__(self, layer: _OutputLayer, n: int, need: tuple[bool, bool, bool]):
        self.layer = layer
        w = layer.weight
        self.dh = w.new_empty(n, w.size(1)) if need[0] else None
        self.dw = torch.zeros_like(w) if need[1] else None
        self.db = torch.zeros_like(w[:, 0]) if need[2] else None
        self.h_prior = self.h_ones = 0.0   # sum over tokens of u_i h_i, per direction
        self.u_prior = self.u_ones = 0.0   # sum over tokens of u_i

    def add(self, rows: slice, h: Tensor, dz: Tensor, u_prior: Optional[Tensor],
            u_ones: Optional[Tensor]) -> None:
        layer = self.layer
        if self.dh is not None:
            dh = torch.mm(dz, layer.weight, out=self.dh[rows])
            if u_prior is not None:
                _sub_outer(dh, u_prior, layer.w_prior)
            if u_ones is not None:
                _sub_outer(dh, u_ones, layer.w_ones)
        if self.dw is not None:
            self.dw.addmm_(dz.t(), h)
            if u_prior is not None:
                self.h_prior = self.h_prior + u_prior @ h
            if u_ones is not None:
                self.h_ones = self.h_ones + u_ones @ h
        if self.db is not None:
            self.db.add_(dz.sum(0))
            if u_prior is not None:
                self.u_prior = self.u_prior + u_prior.sum()
            if u_ones is not None:
                self.u_ones = self.u_ones + u_ones.sum()

    def finish(self) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
        prior = self.layer.prior
        if self.dw is not None:
            if torch.is_tensor(self.h_prior):
                _sub_outer(self.dw, prior, self.h_prior)
            if torch.is_tensor(self.h_ones):
                self.dw.sub_(self.h_ones)
        if self.db is not None:
            if torch.is_tensor(self.u_prior):
                self.db.sub_(prior * self.u_prior)
            if torch.is_tensor(self.u_ones):
                self.db.sub_(self.u_ones)
        return self.dh, self.dw, self.db


def _chunk(layer: _OutputLayer, spec: _Spec, h: Tensor, target: Tensor, teacher,
           grad_rows: Optional[Tensor]):
    """Per-token ``(hard, nll, soft, predicted)`` of one chunk and, when ``grad_rows`` (the
    upstream gradient per token, 0 at padding) is given, the full-rank part of ``dz`` and the
    row coefficients of its two rank-one parts."""
    alpha, temperature = spec.alpha, spec.temperature
    z = layer.logits(h)                                       # (n, K): the chunk's one buffer
    z_target = z.gather(1, target.unsqueeze(1)).squeeze(1)
    top, predicted = z.max(1) if spec.predict else (z.amax(1), None)
    if teacher is not None:
        probs, indices, tail = teacher
        z_kept = z.gather(1, indices)
        if temperature != 1.0:                                # a second buffer for p(T)
            e_t = (z - top.unsqueeze(1)).mul_(1.0 / temperature).exp_()
            sum_t = e_t.sum(1)
            lse_t = top / temperature + sum_t.log()
    e = z.sub_(top.unsqueeze(1)).exp_()                       # exp(z - max), in place
    sum_e = e.sum(1)
    lse = top + sum_e.log()
    nll = lse - z_target
    hard = nll
    if alpha != 0.0:
        prior_dot_z = h @ layer.w_prior + layer.b_prior
        hard = (1.0 - alpha) * nll + alpha * (layer.prior_mass * lse - prior_dot_z)
    soft = mass = None
    if teacher is not None:
        if temperature == 1.0:
            e_t, sum_t, lse_t = e, sum_e, lse
        q_kept = probs if tail is None else probs - tail.unsqueeze(1)
        q_dot_z = (q_kept * z_kept).sum(1)
        mass = probs.sum(1)
        if tail is not None:
            q_dot_z = q_dot_z + tail * (h @ layer.w_ones + layer.b_ones)
            mass = mass + (z.size(1) - indices.size(1)) * tail
        soft = mass * lse_t - q_dot_z / temperature
    values = (hard, nll, soft, predicted)
    if grad_rows is None:
        return values, None
    c_hard = grad_rows * spec.hard_weight
    c_p = c_hard if alpha == 0.0 else c_hard * (1.0 - alpha + alpha * layer.prior_mass)
    c_soft = grad_rows * (spec.soft_weight / temperature)
    u_prior = c_hard * alpha if alpha != 0.0 else None
    u_ones = None
    if teacher is None:
        dz = e.mul_((c_p / sum_e).unsqueeze(1))
    elif temperature == 1.0:
        dz = e.mul_(((c_p + c_soft * mass) / sum_e).unsqueeze(1))
    else:
        dz = e.mul_((c_p / sum_e).unsqueeze(1)).addcmul_(e_t, (c_soft * mass / sum_t).unsqueeze(1))
    dz.scatter_add_(1, target.unsqueeze(1), (-(1.0 - alpha) * c_hard).unsqueeze(1))
    if teacher is not None:
        dz.scatter_add_(1, indices, -c_soft.unsqueeze(1) * q_kept)
        if tail is not None:
            u_ones = c_soft * tail
    return values, (dz, u_prior, u_ones)


def _run(layer: _OutputLayer, spec: _Spec, h: Tensor, target: Tensor, teacher,
         grad_rows: Optional[Tensor], need: tuple[bool, bool, bool]):
    """All chunks: the per-token values and, with ``grad_rows``, ``(dh, dW, db)``."""
    gradients = _Gradients(layer, h.size(0), need) if grad_rows is not None else None
    pieces = []
    for start in range(0, max(h.size(0), 1), spec.chunk_size):  # (one empty chunk if N = 0)
        rows = slice(start, start + spec.chunk_size)
        teacher_rows = None if teacher is None else tuple(
            None if x is None else x[rows] for x in teacher)
        values, dz = _chunk(layer, spec, h[rows], target[rows], teacher_rows,
                            None if grad_rows is None else grad_rows[rows])
        pieces.append(values)
        if dz is not None:
            gradients.add(rows, h[rows], *dz)
            del dz                      # free the chunk's buffer before the next one's
    hard, nll, soft, predicted = (None if parts[0] is None else torch.cat(parts)
                                  for parts in zip(*pieces))
    return (hard, nll, soft, predicted), (None if gradients is None else gradients.finish())


def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    wide = any(t is not None and t.dtype == torch.float64 for t in tensors)
    return torch.float64 if wide else torch.float32


class _Inputs(NamedTuple):
    """The flattened inputs in the compute dtype."""
    layer: _OutputLayer
    hidden: Tensor                    # (N, d)
    target: Tensor                    # (N,), padding replaced by class 0
    pad_mask: Optional[Tensor]        # (N,)
    teacher: Optional[tuple]          # (probs, indices, tail) rows, or None


def _prepare(hidden, weight, bias, target, prior, probs, indices, tail, spec) -> _Inputs:
    dtype = _compute_dtype(hidden, weight, bias)
    flat = target.reshape(-1)
    pad_mask = _padding_mask(flat, spec.ignore_index)
    teacher = None if probs is None else (
        probs.to(dtype), indices, None if tail is None else tail.to(dtype))
    return _Inputs(_OutputLayer(weight, bias, prior, dtype, spec.alpha != 0.0, tail is not None),
                   hidden.reshape(-1, hidden.size(-1)).to(dtype),
                   flat if pad_mask is None else flat.masked_fill(pad_mask, 0), pad_mask, teacher)


def _row_scale(pad_mask: Optional[Tensor], reduction: str, like: Tensor) -> Tensor:
    """d(reduced loss) / d(per-token loss): 0 at padding, 1 (sum, none) or 1/count (mean)."""
    scale = like.new_ones(like.size(0)) if pad_mask is None else (~pad_mask).to(like.dtype)
    if reduction == "mean":
        scale = scale / scale.sum().clamp(min=1.0)  # no padding-free token: zero gradients
    return scale


class _LinearLoss(torch.autograd.Function):
    """``(loss, nll, soft[, predicted])``, the first three reduced as ``spec.reduction``; a
    gradient for ``loss`` only, to ``hidden``, ``weight`` and ``bias`` (see the module's
    docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, prior, probs, indices, tail, spec):
        with torch.autocast(hidden.device.type, enabled=False):  # float32 math under AMP
            x = _prepare(hidden, weight, bias, target, prior, probs, indices, tail, spec)
            need = tuple(ctx.needs_input_grad[:3])
            early = any(need) and spec.reduction != "none"  # gradients now: g is one number
            grad_rows = _row_scale(x.pad_mask, spec.reduction, x.hidden) if early else None
            (hard, nll, soft, predicted), grads = _run(x.layer, spec, x.hidden, x.target,
                                                       x.teacher, grad_rows, need)
            if soft is None:
                loss, soft = hard, torch.zeros_like(nll)
            else:
                loss = spec.hard_weight * hard + spec.soft_weight * soft
            pad_mask = None if x.pad_mask is None else x.pad_mask.reshape(target.shape)
            outputs = [_reduce(v.reshape(target.shape), pad_mask, spec.reduction)
                       for v in (loss, nll, soft)]
        ctx.spec, ctx.grads = spec, grads
        ctx.input_types = [None if t is None else (t.shape, t.dtype) for t in (hidden, weight, bias)]
        if not early:
            ctx.save_for_backward(hidden, weight, bias, target, prior, probs, indices, tail)
        if spec.predict:
            outputs.append(predicted.reshape(target.shape))
        ctx.mark_non_differentiable(*outputs[1:])
        return tuple(outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, *_not_differentiable):
        with torch.autocast(g_loss.device.type, enabled=False):
            if ctx.spec.reduction != "none":               # computed in the forward pass
                if ctx.grads is None:
                    raise RuntimeError("the fused linear loss supports one backward pass per "
                                       "forward pass")
                grads, ctx.grads = ctx.grads, None         # release them with the graph
                grads = [None if g is None else g.mul_(g_loss.to(g.dtype)) for g in grads]
            else:
                x = _prepare(*ctx.saved_tensors, ctx.spec)
                grad_rows = _row_scale(x.pad_mask, "none", x.hidden) * g_loss.reshape(-1).to(
                    x.hidden.dtype)
                _, grads = _run(x.layer, ctx.spec, x.hidden, x.target, x.teacher, grad_rows,
                                tuple(ctx.needs_input_grad[:3]))
        grads = [None if g is None else g.reshape(shape_dtype[0]).to(shape_dtype[1])
                 for g, shape_dtype in zip(grads, ctx.input_types)]
        return (*grads, None, None, None, None, None, None)


def _check_arguments(hidden: Tensor, weight: Tensor, target: Tensor, bias, prior, teacher,
                     reduction: str, chunk_size) -> None:
    """:class:`~ls_plugins.cli.UsageError` (``<argument>: <allowed>, got <value>``) on bad input."""
    if weight.dim() != 2 or hidden.size(-1) != weight.size(1):
        raise bad_value("weight", f"must have shape (K, {hidden.size(-1)}) (hidden's last "
                        "dimension)", tuple(weight.shape))
    if target.shape != hidden.shape[:-1]:
        raise bad_value("target", f"must have hidden's leading shape {tuple(hidden.shape[:-1])}",
                        tuple(target.shape))
    num_classes = weight.size(0)
    for name, vector in (("bias", bias), ("prior", prior)):
        if vector is not None and vector.shape != (num_classes,):
            raise bad_value(name, f"must have shape ({num_classes},)", tuple(vector.shape))
    if teacher is not None and (teacher.num_classes != num_classes
                                or teacher.probs.shape[:-1] != target.shape):
        raise bad_value("teacher", f"must cover target's {tuple(target.shape)} positions and "
                        f"K={num_classes} classes", f"{tuple(teacher.probs.shape[:-1])} "
                        f"positions and K={teacher.num_classes}")
    if reduction not in REDUCTIONS:
        raise bad_value("reduction", f"must be one of {', '.join(REDUCTIONS)}", repr(reduction))
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise bad_value("chunk_size", "must be an integer >= 1", repr(chunk_size))


def default_chunk_size(num_classes: int) -> int:
    """Tokens per chunk: a float32 ``chunk x K`` buffer of at most :data:`CHUNK_BYTES`."""
    return max(1, CHUNK_BYTES // (4 * num_classes))


def linear_loss_terms(hidden: Tensor, weight: Tensor, target: Tensor, *,
                      bias: Optional[Tensor] = None, alpha: float = 0.0,
                      prior: Optional[Tensor] = None, teacher: Optional[TopKTeacher] = None,
                      beta: float = 0.0, temperature: float = 1.0, scale_by_t2: bool = False,
                      ignore_index: Optional[int] = None, reduction: str = "sum",
                      chunk_size: Optional[int] = None,
                      predict: bool = False) -> LinearLossTerms:
    """Loss, NLL, soft term and arg-max of ``z = hidden @ weight.T + bias``, chunked.

    Without ``teacher``: ``loss = H(y (1 - alpha) + alpha prior, p)`` (``prior=None``: uniform
    ``1/K``), as :func:`~ls_plugins.losses.smoothed_cross_entropy`, and ``soft`` is 0.  With a
    top-k ``teacher`` (already tempered, without gradient): ``loss = (1 - beta) H(y_LS, p) +
    beta s H(q, p(T))`` (``s = T**2`` with ``scale_by_t2``), as
    :func:`~ls_plugins.losses.distillation_terms`.  ``hidden``: ``(..., d)``; ``weight``:
    ``(K, d)``; ``target``: ``hidden``'s leading shape.  ``chunk_size``: tokens per chunk
    (default :func:`default_chunk_size`).  ``nll`` and ``soft`` are for logging: no gradient.
    ``predict``: also return every position's arg-max class (costs a little: ``max`` with
    indices instead of ``amax``).
    """
    check_probability("alpha", alpha, upper_inclusive=False)
    check_probability("beta", beta, upper_inclusive=True)
    check_temperature("temperature", temperature)
    _check_arguments(hidden, weight, target, bias, prior, teacher, reduction, chunk_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(weight.size(0))
    if teacher is None:
        weights, parts = (1.0, 0.0), (None, None, None)
    else:
        k = teacher.indices.size(-1)
        weights = (1.0 - beta, beta * (temperature ** 2 if scale_by_t2 else 1.0))
        parts = (teacher.probs.detach().reshape(-1, k), teacher.indices.reshape(-1, k),
                 None if teacher.tail is None else teacher.tail.detach().reshape(-1))
    spec = _Spec(float(alpha), *weights, float(temperature), ignore_index, reduction, chunk_size,
                 bool(predict))
    outputs = _LinearLoss.apply(hidden, weight, bias, target,
                                None if prior is None else prior.detach(), *parts, spec)
    return LinearLossTerms(*outputs, *([] if predict else [None]))


def linear_smoothed_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor,
                                  alpha: float = 0.0, *, bias: Optional[Tensor] = None,
                                  prior: Optional[Tensor] = None,
                                  ignore_index: Optional[int] = None, reduction: str = "sum",
                                  chunk_size: Optional[int] = None) -> Tensor:
    """``smoothed_cross_entropy(hidden @ weight.T + bias, target, alpha, ...)`` in value and in
    gradients (``hidden``, ``weight``, ``bias``), without holding the ``N x K`` logits.

    >>> hidden = torch.tensor([[1.0, 0.0], [0.5, -1.0]]); weight = torch.eye(3, 2)
    >>> target = torch.tensor([0, 2])                 # logits [[1, 0, 0], [0.5, -1, 0]]
    >>> round(linear_smoothed_cross_entropy(hidden, weight, target, 0.1).item(), 4)
    1.7389
    """
    return linear_loss_terms(hidden, weight, target, bias=bias, alpha=alpha, prior=prior,
                             ignore_index=ignore_index, reduction=reduction,
                             chunk_size=chunk_size).loss


def linear_distillation_terms(hidden: Tensor, weight: Tensor, target: Tensor, teacher_probs, *,
                              beta: float, temperature: float = 1.0, alpha: float = 0.0,
                              bias: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                              reduction: str = "sum", scale_by_t2: bool = False,
                              chunk_size: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
    """``distillation_terms(hidden @ weight.T + bias, None, target, teacher_probs=...)``:
    ``(loss, nll, soft)``, chunked for a :class:`~ls_plugins.losses.TopKTeacher`.

    A dense teacher (``(..., K)`` probabilities) or one that needs a gradient falls back to the
    unfused computation (it holds ``N x K`` numbers anyway).
    """
    if not isinstance(teacher_probs, TopKTeacher) or teacher_probs.probs.requires_grad or (
            teacher_probs.tail is not None and teacher_probs.tail.requires_grad):
        return distillation_terms(F.linear(hidden, weight, bias), None, target, beta=beta,
                                  temperature=temperature, alpha=alpha,
                                  ignore_index=ignore_index, reduction=reduction,
                                  teacher_probs=teacher_probs, scale_by_t2=scale_by_t2)
    return tuple(linear_loss_terms(
        hidden, weight, target, bias=bias, alpha=alpha, teacher=teacher_probs, beta=beta,
        temperature=temperature, scale_by_t2=scale_by_t2, ignore_index=ignore_index,
        reduction=reduction, chunk_size=chunk_size)[:3])
