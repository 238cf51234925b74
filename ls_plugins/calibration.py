"""Calibration statistics: ECE, MCE, NLL, Brier score, reliability bins, temperature fitting.

Pure torch (paper section 3; Guo et al. 2017).  One prediction's *confidence* is its largest
probability and it is *correct* when its argmax equals the target.

Bins: ``n_bins`` equal-width bins with edges ``torch.linspace(0, 1, n_bins + 1)`` in float64;
bin ``i`` holds confidences in ``(i/n, (i+1)/n]`` and the first bin also holds exactly 0.
With ``n_b`` predictions, confidence sum ``C_b`` and correct count ``A_b`` in bin ``b`` and
``N = sum_b n_b``::

    ECE = sum_b (n_b / N) |A_b / n_b - C_b / n_b| = sum_b |A_b - C_b| / N
    MCE = max over non-empty b of |A_b / n_b - C_b / n_b|

All sums are float64, so shards, batches and workers merge exactly (``a.merge(b)`` or ``a + b``).
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from torch import Tensor

from .cli import check_int_at_least
from .losses import check_temperature

DEFAULT_BINS = 15
SMALL_K = 64  # up to this many classes a full arg-max pass is cheaper than avoiding it


def check_bins(n_bins: int, option: str = "--calibration-bins") -> int:
    """Return ``n_bins`` if it is an integer >= 1; raise ``ValueError`` otherwise."""
    return check_int_at_least(option, n_bins, 1)


def bin_edges(n_bins: int) -> Tensor:
    return torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)


def bin_sums(confidence: Tensor, correct: Tensor, n_bins: int = DEFAULT_BINS) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin ``(count, confidence sum, correct count)`` as float64 vectors of length ``n_bins``."""
    confidence = confidence.detach().reshape(-1).double().cpu()
    correct = correct.detach().reshape(-1).double().cpu()
    index = (torch.bucketize(confidence, bin_edges(n_bins), right=False) - 1).clamp_(0, n_bins - 1)
    values = torch.stack([torch.ones_like(confidence), confidence, correct])
    sums = torch.zeros(3, n_bins, dtype=torch.float64).scatter_add_(1, index.expand(3, -1), values)
    return sums[0], sums[1], sums[2]


def ece_from_bin_sums(counts, conf_sums, correct_sums) -> float:
    """``sum_b |A_b - C_b| / N`` from per-bin sums (any sequences of equal length)."""
    counts, conf_sums, correct_sums = (torch.as_tensor(x, dtype=torch.float64)
                                       for x in (counts, conf_sums, correct_sums))
    total = counts.sum()
    if total == 0:
        return float("nan")
    return float((correct_sums - conf_sums).abs().sum() / total)


def expected_calibration_error(probs: Tensor, target: Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """Equal-width ECE of probabilities ``probs`` (N x K) against integer ``target`` (N).

    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> round(expected_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=10), 4)
    0.3
    """
    confidence, prediction = probs.max(dim=-1)
    return ece_from_bin_sums(*bin_sums(confidence, prediction.eq(target), check_bins(n_bins)))


def _flatten(logits: Tensor, target: Tensor, ignore_index: Optional[int]) -> tuple[Tensor, Tensor]:
    logits = logits.detach().reshape(-1, logits.size(-1))
    target = target.detach().reshape(-1)
    if ignore_index is not None:
        keep = target.ne(ignore_index)
        if not bool(keep.all()):
            logits, target = logits[keep], target[keep]
    return logits, target


def _confidence_and_correct(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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
                           target: Tensor, *, ignore_index: Optional[int] = None) -> None:
    """Add the predictions ``softmax(logits / T)`` to ``stats[T]`` for every temperature ``T``.

    Shared by all temperatures: the arg-max, ``d_k = z_k - max_j z_j`` (0 at the maximum) and the
    target's ``d_y``.  Then each temperature costs one scaled exponential, ``e_k = exp(d_k / T)``,
    with ``s = sum_k e_k``: confidence ``1/s``, ``-log p_y = log s - d_y / T`` (no underflow),
    and ``sum_k p_k^2 = sum_k e_k^2 / s^2`` for the Brier score.
    """
    for temperature in stats:
        check_temperature("temperature", temperature)
    logits, target = _flatten(logits, target, ignore_index)
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
        accumulator._accumulate(inv_s, correct, s.log() - true_scaled, brier)


class CalibrationStats:
    """Streaming calibration statistics with O(n_bins) memory and exact merging.

    ``adaptive=True`` additionally keeps every (confidence, correct) pair so that the equal-mass
    ("adaptive") ECE can be computed; that option costs O(N) memory.

    >>> stats = CalibrationStats(n_bins=10)
    >>> stats.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    >>> stats.count(), round(stats.accuracy(), 3), round(stats.confidence(), 4), round(stats.ece(), 4)
    (2, 0.5, 0.8059, 0.4251)
    """

    def __init__(self, n_bins: int = DEFAULT_BINS, *, adaptive: bool = False):
        self.n_bins = check_bins(n_bins)
        self.adaptive = adaptive
        self.counts = torch.zeros(self.n_bins, dtype=torch.float64)
        self.conf_sums = torch.zeros(self.n_bins, dtype=torch.float64)
        self.correct_sums = torch.zeros(self.n_bins, dtype=torch.float64)
        self.nll_sum = 0.0
        self.brier_sum = 0.0
        self._values: list[tuple[Tensor, Tensor]] = []

    # -- accumulation -------------------------------------------------------------------------
    def update(self, logits: Tensor, target: Tensor, *, temperature: float = 1.0,
               ignore_index: Optional[int] = None) -> None:
        """Add predictions ``softmax(logits / T)`` (``... x K``) against ``target`` (``...``)."""
        update_at_temperatures({temperature: self}, logits, target, ignore_index=ignore_index)

    def update_probs(self, probs: Tensor, target: Tensor, *, ignore_index: Optional[int] = None) -> None:
        """Add predictions given as probabilities (e.g. an ensemble's averaged softmax)."""
        probs, target = _flatten(probs, target, ignore_index)
        if target.numel() == 0:
            return
        if probs.dtype != torch.float64:
            probs = probs.float()
        confidence, p_true, correct = _confidence_and_correct(probs, target)
        self._accumulate(confidence, correct, -p_true.clamp_min(1e-45).log(),
                         probs.pow(2).sum(-1) - 2.0 * p_true + 1.0)

    def _accumulate(self, confidence: Tensor, correct: Tensor, nll: Tensor, brier: Tensor) -> None:
        counts, conf_sums, correct_sums = bin_sums(confidence, correct, self.n_bins)
        self.counts += counts
        self.conf_sums += conf_sums
        self.correct_sums += correct_sums
        self.nll_sum += float(nll.double().sum())
        self.brier_sum += float(brier.double().sum())
        if self.adaptive:
            self._values.append((confidence.detach().double().cpu(), correct.detach().cpu()))

    def merge(self, other: "CalibrationStats") -> "CalibrationStats":
        """A new ``CalibrationStats`` holding both sets of predictions (exact)."""
        if other.n_bins != self.n_bins:
            raise ValueError(f"cannot merge statistics with {self.n_bins} and {other.n_bins} bins")
        if other.adaptive != self.adaptive:
            raise ValueError(f"cannot merge statistics with adaptive={self.adaptive} and "
                             f"adaptive={other.adaptive}: the adaptive ECE needs every "
                             f"prediction's confidence from both")
        merged = CalibrationStats(self.n_bins, adaptive=self.adaptive)
        merged.counts = self.counts + other.counts
        merged.conf_sums = self.conf_sums + other.conf_sums
        merged.correct_sums = self.correct_sums + other.correct_sums
        merged.nll_sum = self.nll_sum + other.nll_sum
        merged.brier_sum = self.brier_sum + other.brier_sum
        if merged.adaptive:
            merged._values = self._values + other._values
        return merged

    __add__ = merge

    @classmethod
    def from_sums(cls, counts, conf_sums, correct_sums, nll_sum: float = 0.0,
                  brier_sum: float = 0.0) -> "CalibrationStats":
        """Rebuild statistics from per-bin sums (e.g. summed fairseq logging outputs)."""
        stats = cls(len(counts))
        stats.counts = torch.as_tensor(counts, dtype=torch.float64).clone()
        stats.conf_sums = torch.as_tensor(conf_sums, dtype=torch.float64).clone()
        stats.correct_sums = torch.as_tensor(correct_sums, dtype=torch.float64).clone()
        stats.nll_sum, stats.brier_sum = float(nll_sum), float(brier_sum)
        return stats

    # -- results ------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self.counts.sum())

    def _mean(self, total: float) -> float:
        n = self.count()
        return total / n if n else float("nan")

    def ece(self) -> float:
        return ece_from_bin_sums(self.counts, self.conf_sums, self.correct_sums)

    def mce(self) -> float:
        nonempty = self.counts > 0
        if not bool(nonempty.any()):
            return float("nan")
        gaps = (self.correct_sums[nonempty] - self.conf_sums[nonempty]).abs() / self.counts[nonempty]
        return float(gaps.max())

    def adaptive_ece(self) -> float:
        """Equal-mass ECE: ``n_bins`` bins holding (nearly) equal numbers of predictions."""
        if not self.adaptive:
            raise ValueError("adaptive ECE needs CalibrationStats(..., adaptive=True)")
        if not self._values:
            return float("nan")
        confidence = torch.cat([c for c, _ in self._values])
        correct = torch.cat([a for _, a in self._values]).double()
        order = torch.argsort(confidence, stable=True)
        total = 0.0
        for chunk in torch.tensor_split(order, self.n_bins):
            if chunk.numel():
                total += float((correct[chunk].sum() - confidence[chunk].sum()).abs())
        return total / confidence.numel()

    def accuracy(self) -> float:
        return self._mean(float(self.correct_sums.sum()))

    def confidence(self) -> float:
        return self._mean(float(self.conf_sums.sum()))

    def nll(self) -> float:
        """Mean negative log-likelihood of the target, in nats."""
        return self._mean(self.nll_sum)

    def brier(self) -> float:
        """Mean multi-class Brier score ``sum_k (p_k - y_k)^2``."""
        return self._mean(self.brier_sum)

    def bins(self) -> list[dict]:
        edges = bin_edges(self.n_bins).tolist()
        rows = []
        for i in range(self.n_bins):
            n = float(self.counts[i])
            rows.append({
                "lower": edges[i], "upper": edges[i + 1], "count": int(n),
                "confidence": float(self.conf_sums[i]) / n if n else None,
                "accuracy": float(self.correct_sums[i]) / n if n else None,
            })
        return rows

    def to_dict(self) -> dict:
        def finite(x: float):
            return x if math.isfinite(x) else None
        result = {
            "n_bins": self.n_bins, "count": self.count(), "ece": finite(self.ece()),
            "mce": finite(self.mce()), "nll": finite(self.nll()),
            "nll_base2": finite(self.nll() / math.log(2)), "brier": finite(self.brier()),
            "accuracy": finite(self.accuracy()), "confidence": finite(self.confidence()),
        }
        if self.adaptive:
            result["adaptive_ece"] = finite(self.adaptive_ece())
        result["bins"] = self.bins()
        return result

    def summary(self, temperature: float = 1.0) -> str:
        """One log line, e.g. ``Calibration | T 1.00 | bins 15 | tokens N | ECE ... | ...``."""
        return (f"Calibration | T {temperature:.2f} | bins {self.n_bins} | tokens {self.count()} | "
                f"ECE {self.ece():.4f} | MCE {self.mce():.4f} | NLL {self.nll():.4f} | "
                f"Brier {self.brier():.4f} | acc {self.accuracy():.4f} | conf {self.confidence():.4f}")


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
    logits, target = _flatten(logits, target, ignore_index)
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
