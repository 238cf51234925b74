"""Temperature fitting: ``T* = argmin_T NLL(softmax(logits / T))``, exact or streamed.

With ``beta = 1/T`` the summed negative log-likelihood of the targets ``y_i``,

    NLL(beta) = sum_i [ log sum_k exp(beta z_ik) - beta z_iy ],

is convex in ``beta`` (a log-sum-exp of linear functions minus a linear one), with

    NLL'(beta)  = sum_i ( E_p[z_i] - z_iy ),    NLL''(beta) = sum_i Var_p(z_i),   p = softmax(beta z_i).

:func:`fit_temperature` holds all logits and runs a safeguarded Newton search on ``beta``;
:class:`TemperatureFit` streams batches with memory independent of the number of predictions.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .cli import bad_value, check_positive

CHUNK_ELEMENTS = 1 << 20  # elements of one chunk's work tensor (rows x grid points x classes)


def flatten_predictions(logits: Tensor, target: Tensor, ignore_index: Optional[int],
                        groups: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(N x K logits, N targets, N group ids or None)`` of the predictions whose target is not
    ``ignore_index``; ``groups`` holds one integer id per target position."""
    logits = logits.detach().reshape(-1, logits.size(-1))
    target = target.detach().reshape(-1)
    if groups is not None:
        groups = torch.as_tensor(groups)
        if groups.is_floating_point() or groups.is_complex() or groups.dtype == torch.bool:
            raise bad_value("groups", "must hold integer ids", groups.dtype)
        if groups.numel() != target.numel():
            raise bad_value("groups", f"must hold one id per target position ({target.numel()})",
                            f"{groups.numel()} ids")
        groups = groups.detach().reshape(-1).to(target.device)
    if ignore_index is not None:
        keep = target.ne(ignore_index)
        if not bool(keep.all()):
            logits, target = logits[keep], target[keep]
            groups = groups[keep] if groups is not None else None
    return logits, target, groups


def _nll_gradient_terms(logits: Tensor, target: Tensor, beta: float, chunk: int) -> tuple[float, float, float]:
    """NLL(beta), dNLL/dbeta and d2NLL/dbeta2 (sums) for ``softmax(beta * logits)``."""
    value = grad = hess = 0.0
    for start in range(0, logits.size(0), chunk):
        z = logits[start:start + chunk].double()
        y = target[start:start + chunk]
        scaled = z * beta
        log_norm = torch.logsumexp(scaled, dim=-1)
        p = torch.exp(scaled - log_norm.unsqueeze(-1))
        z_true = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        mean_z = (p * z).sum(-1)
        value += float((log_norm - beta * z_true).sum())
        grad += float((mean_z - z_true).sum())
        hess += float(((p * z * z).sum(-1) - mean_z ** 2).sum())
    return value, grad, hess


def fit_temperature(logits: Tensor, target: Tensor, *, ignore_index: Optional[int] = None,
                    bounds: tuple[float, float] = (0.01, 100.0), tol: float = 1e-7) -> float:
    """``argmin_T NLL(softmax(logits / T))``.

    NLL is convex in ``beta = 1/T`` (a log-sum-exp of linear functions minus a linear term), so a
    bracketed, safeguarded Newton search on ``beta`` finds the global minimum; the result is
    clipped to ``bounds``.
    """
    logits, target, _ = flatten_predictions(logits, target, ignore_index)
    if target.numel() == 0:
        raise ValueError("fit_temperature needs at least one non-ignored prediction")
    chunk = max(1, (1 << 22) // logits.size(-1))
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    if _nll_gradient_terms(logits, target, lo, chunk)[1] >= 0:
        return bounds[1]
    if _nll_gradient_terms(logits, target, hi, chunk)[1] <= 0:
        return bounds[0]
    beta = 1.0
    for _ in range(100):
        _, grad, hess = _nll_gradient_terms(logits, target, beta, chunk)
        if grad > 0:
            hi = beta
        else:
            lo = beta
        step = beta - grad / hess if hess > 0 else None
        beta_next = step if step is not None and lo < step < hi else math.sqrt(lo * hi)
        if abs(beta_next - beta) <= tol * beta:
            beta = beta_next
            break
        beta = beta_next
    return 1.0 / beta


class TemperatureFit:
    """Streaming ``argmin_T NLL(softmax(logits / T))``: memory independent of the number of tokens.

    The NLL has no finite sufficient statistics, so the fitter keeps its derivatives on a fixed
    grid, ``beta_j = 2^j / t_max`` for ``j = 0 .. J`` (``J = ceil(log2(t_max / t_min))``: from
    ``T = t_max`` down to ``t_min`` or just below), summed over every prediction seen::

        derivatives[0, j] = NLL'(beta_j)    = sum_i E_p[z_i] - z_iy
        derivatives[1, j] = NLL''(beta_j)   = sum_i Var_p(z_i)
        derivatives[2, j] = NLL'''(beta_j)  = sum_i E_p[(z_i - E_p[z_i])^3]

    with ``p = softmax(beta_j z_i)``.  Sums add up across batches, shards and workers
    (``merge`` / ``+``).  :meth:`fit` finds the grid interval where the increasing ``NLL'``
    changes sign, interpolates ``NLL'`` there by the quintic Hermite polynomial in
    ``u = log beta`` through its value and first two derivatives in ``u`` at both ends (error
    O(h^6), ``h = log 2``), and returns ``1/beta`` at its root.  With the default grid (T from 20
    down to 0.039, 10 points) the result was within 0.15% of :func:`fit_temperature` on
    synthetic logits with planted temperatures 0.1-10 and K = 10-3000.  Outside the grid the fit
    returns its nearer end.

    Cost per update: one exponential of the logits; each further grid point squares the previous
    one (``exp(2 beta d) = exp(beta d)^2``), and one batched matrix product gives the moments
    ``sum_k e_k d_k^n`` (``n = 0..3``) of every point.  Shifted logits ``d = z - max z`` below
    ``-100 t_max`` count as minus infinity, and terms below 1e-18 (the maximum's term is 1) are
    dropped, which also keeps float32 out of its slow subnormal range.
    """

    def __init__(self, *, t_min: float = 0.05, t_max: float = 20.0):
        check_positive("t_min", t_min)
        check_positive("t_max", t_max)
        if not t_max > t_min:
            raise bad_value("t_max", f"must be larger than t_min ({t_min})", t_max)
        octaves = math.ceil(math.log2(t_max / t_min) - 1e-12)
        self.betas = 2.0 ** torch.arange(octaves + 1, dtype=torch.float64) / t_max
        self.derivatives = torch.zeros(3, octaves + 1, dtype=torch.float64)
        self.count = 0

    def update(self, logits: Tensor, target: Tensor, *, ignore_index: Optional[int] = None) -> None:
        """Add the predictions ``logits`` (``... x K``) with targets ``target`` (``...``)."""
        logits, target, _ = flatten_predictions(logits, target, ignore_index)
        if target.numel() == 0:
            return
        z = logits if logits.dtype == torch.float64 else logits.float()
        points, k = len(self.betas), z.size(-1)
        first_beta = float(self.betas[0])
        rows = max(1, CHUNK_ELEMENTS // (points * k))
        for start in range(0, z.size(0), rows):
            d = z[start:start + rows]
            d = (d - d.amax(-1, keepdim=True)).clamp_min_(-100.0 / first_beta)
            d_true = d.gather(-1, target[start:start + rows].unsqueeze(-1)).double()
            e = torch.empty(d.size(0), points, k, dtype=d.dtype, device=d.device)
            torch.mul(d, first_beta, out=e[:, 0]).clamp_min_(-80.0).exp_()
            for j in range(1, points):
                torch.nn.functional.threshold_(e[:, j - 1], 1e-18, 0.0)
                torch.mul(e[:, j - 1], e[:, j - 1], out=e[:, j])
            powers = torch.stack([torch.ones_like(d), d, d * d, d * d * d], 1)
            moments = torch.einsum("rpk,rnk->rpn", e, powers).double()  # rows x points x 4
            moments = moments[..., 1:] / moments[..., :1]      # E_p[d], E_p[d^2], E_p[d^3]
            mean, second, third = moments.unbind(-1)
            variance = second - mean.square()
            self.derivatives[0] += (mean - d_true).sum(0).cpu()
            self.derivatives[1] += variance.sum(0).cpu()
            self.derivatives[2] += (third - 3.0 * mean * variance - mean ** 3).sum(0).cpu()
        self.count += target.numel()

    def merge(self, other: "TemperatureFit") -> "TemperatureFit":
        """A new fitter holding both sets of predictions (same grid required)."""
        if not torch.equal(other.betas, self.betas):
            raise bad_value("other", "must use the same temperature grid", "a different grid")
        merged = TemperatureFit.__new__(TemperatureFit)
        merged.betas = self.betas
        merged.derivatives = self.derivatives + other.derivatives
        merged.count = self.count + other.count
        return merged

    __add__ = merge

    def fit(self) -> float:
        """The NLL-minimising temperature of every prediction seen (see the class docstring)."""
        if self.count == 0:
            raise ValueError("TemperatureFit.fit needs at least one prediction (call update first)")
        g = self.derivatives[0].tolist()
        if g[0] >= 0:   # NLL already increases at the smallest beta: T* >= the largest T
            return 1.0 / float(self.betas[0])
        if g[-1] <= 0:  # NLL still decreases at the largest beta: T* <= the smallest T
            return 1.0 / float(self.betas[-1])
        i = next(j for j in range(len(g) - 1) if g[j + 1] >= 0)
        step = math.log(2.0)
        ends = []
        for j in (i, i + 1):  # NLL' and its first two derivatives in u = log beta, times step^n
            beta, (first, second, third) = float(self.betas[j]), self.derivatives[:, j].tolist()
            ends.append((first, step * beta * second,
                         step ** 2 * (beta * second + beta ** 2 * third)))
        (y0, d0, s0), (y1, d1, s1) = ends

        def hermite(t: float) -> float:
            t2, t3, t4, t5 = t * t, t ** 3, t ** 4, t ** 5
            return (y0 * (1 - 10 * t3 + 15 * t4 - 6 * t5) + y1 * (10 * t3 - 15 * t4 + 6 * t5)
                    + d0 * (t - 6 * t3 + 8 * t4 - 3 * t5) + d1 * (-4 * t3 + 7 * t4 - 3 * t5)
                    + s0 * (t2 - 3 * t3 + 3 * t4 - t5) / 2 + s1 * (t3 - 2 * t4 + t5) / 2)

        low, high = 0.0, 1.0  # hermite(0) = g[i] < 0 <= g[i + 1] = hermite(1): bisect
        for _ in range(60):
            middle = 0.5 * (low + high)
            if hermite(middle) < 0:
                low = middle
            else:
                high = middle
        return 1.0 / (float(self.betas[i]) * 2.0 ** (0.5 * (low + high)))
