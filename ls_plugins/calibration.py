"""Calibration statistics: ECE, MCE, NLL, Brier score, reliability bins, bootstrap intervals.

Pure torch (paper section 3; Guo et al. 2017).  One prediction's *confidence* is its largest
probability and it is *correct* when its argmax equals the target.

Bins: ``n_bins`` equal-width bins with edges ``torch.linspace(0, 1, n_bins + 1)`` in float64;
bin ``i`` holds confidences in ``(i/n, (i+1)/n]`` and the first bin also holds exactly 0.
With ``n_b`` predictions, confidence sum ``C_b`` and correct count ``A_b`` in bin ``b`` and
``N = sum_b n_b``::

    ECE = sum_b (n_b / N) |A_b / n_b - C_b / n_b| = sum_b |A_b - C_b| / N
    MCE = max over non-empty b of |A_b / n_b - C_b / n_b|

All sums are float64, so shards, batches and workers merge exactly (``a.merge(b)`` or ``a + b``).
The other estimators (debiased squared calibration error, marginal and adaptive ECE) are defined
on the methods that compute them.

Intervals (``bootstrap=B``): a Poisson bootstrap over groups (sentences, images).  Each group
gets ``B`` weights ``w ~ Poisson(1)`` that depend only on ``(seed, group id)``
(:mod:`ls_plugins.bootstrap`); every replicate keeps its own weighted bin table, so replicates
merge like the main table, and statistics of two models scored on the same groups with the
same seed are paired (:func:`paired_interval`).  An interval is the percentile interval of the
metric over the replicates.  ``groups=None`` makes each prediction its own group, identified by
its running position in this object: deterministic for one stream of updates (and paired
between two models scored on the same predictions in the same order), but a second shard's
positions would repeat the first's, so merging two objects that both used positions is refused:
give explicit group ids (e.g. sentence ids) when statistics are merged across shards or workers.
"""
from __future__ import annotations

import math
from statistics import NormalDist
from typing import Optional

import torch
from torch import Tensor

from .alignment import hypothesis_correctness  # noqa: F401  (public API, DESIGN.md)
from .bootstrap import paired_difference_interval, percentile_interval, poisson_weights
from .calibration_fit import TemperatureFit, fit_temperature, flatten_predictions  # noqa: F401
from .calibration_bins import (DEFAULT_BINS, METRICS, bin_edges, bin_index,  # noqa: F401
                               bin_sums, check_bins, class_bin_sums, ece_from_bin_sums,
                               metric_from_sums)
from .calibration_predictions import confidence_and_correct, update_at_temperatures
from .cli import bad_value, check_int_at_least, check_open_unit

GROUP_STREAM, POSITION_STREAM = 0, 1  # weight streams of explicit group ids and of positions
WEIGHTS_AT_ONCE = 1 << 21  # elements of the replicate weight matrix drawn at once


def expected_calibration_error(probs: Tensor, target: Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """Equal-width ECE of probabilities ``probs`` (N x K) against integer ``target`` (N).

    >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> round(expected_calibration_error(probs, torch.tensor([0, 1, 1]), n_bins=10), 4)
    0.3
    """
    confidence, prediction = probs.max(dim=-1)
    return ece_from_bin_sums(*bin_sums(confidence, prediction.eq(target), check_bins(n_bins)))


class CalibrationStats:
    """Streaming calibration statistics with O(n_bins * (1 + bootstrap)) memory and exact merging.

    ``bootstrap=B`` keeps ``B`` Poisson-bootstrap replicate tables (per bin: count, confidence
    and correct sums; NLL and Brier sums) for :meth:`interval`, drawn with ``seed``.
    ``marginal=True`` keeps per-class bin sums (O(K * n_bins)) for :meth:`marginal_ece`.
    ``adaptive=True`` keeps every (confidence, correct) pair for :meth:`adaptive_ece` (O(N)).

    >>> stats = CalibrationStats(n_bins=10)
    >>> stats.update(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    >>> stats.count(), round(stats.accuracy(), 3), round(stats.confidence(), 4), round(stats.ece(), 4)
    (2, 0.5, 0.8059, 0.4251)
    """

    def __init__(self, n_bins: int = DEFAULT_BINS, *, bootstrap: int = 0, seed: int = 0,
                 adaptive: bool = False, marginal: bool = False):
        self.n_bins = check_bins(n_bins)
        self.bootstrap = check_int_at_least("bootstrap", bootstrap, 0)
        self.seed = check_int_at_least("seed", seed, 0)
        self.adaptive = adaptive
        self.marginal = marginal
        self.counts = torch.zeros(self.n_bins, dtype=torch.float64)
        self.conf_sums = torch.zeros(self.n_bins, dtype=torch.float64)
        self.correct_sums = torch.zeros(self.n_bins, dtype=torch.float64)
        self.nll_sum = 0.0
        self.brier_sum = 0.0
        # replicate r: [bin counts | bin confidence sums | bin correct sums | NLL sum | Brier sum]
        self.replicate_sums = torch.zeros(self.bootstrap, 3 * self.n_bins + 2, dtype=torch.float64)
        self.positions = 0  # predictions that got their running position as group id
        self.class_sums: Optional[Tensor] = None  # marginal: [count, p_k sum, y == k] x K x bins
        self._values: list[tuple[Tensor, Tensor]] = []

    # -- accumulation -------------------------------------------------------------------------
    def update(self, logits: Tensor, target: Tensor, *, temperature: float = 1.0,
               ignore_index: Optional[int] = None, groups: Optional[Tensor] = None) -> None:
        """Add predictions ``softmax(logits / T)`` (``... x K``) against ``target`` (``...``);
        ``groups``: one integer id per target position, the unit the bootstrap resamples."""
        update_at_temperatures({temperature: self}, logits, target, ignore_index=ignore_index,
                               groups=groups)

    def update_probs(self, probs: Tensor, target: Tensor, *, ignore_index: Optional[int] = None,
                     groups: Optional[Tensor] = None) -> None:
        """Add predictions given as probabilities (e.g. an ensemble's averaged softmax)."""
        probs, target, groups = flatten_predictions(probs, target, ignore_index, groups)
        if target.numel() == 0:
            return
        if probs.dtype != torch.float64:
            probs = probs.float()
        confidence, p_true, correct = confidence_and_correct(probs, target)
        self._accumulate(confidence, correct, -p_true.clamp_min(1e-45).log(),
                         probs.pow(2).sum(-1) - 2.0 * p_true + 1.0, groups=groups)
        if self.marginal:
            self._accumulate_classes(probs, target)

    def update_confidences(self, confidence: Tensor, correct: Tensor, *,
                           groups: Optional[Tensor] = None) -> None:
        """Add predictions known only by their confidence ``p`` and correctness ``c`` (e.g. the
        tokens beam search generated: only the chosen token's probability is known).

        Binned like every prediction; with no distribution over the classes, the NLL and the
        Brier score are those of the binary forecast "correct with probability ``p``":
        ``-(c log p + (1 - c) log(1 - p))`` and ``(p - c)^2``.  ``groups``: one integer id per
        prediction (the unit the bootstrap resamples).
        """
        if self.marginal:
            raise bad_value("marginal", "the marginal ECE needs every class's probability, not "
                            "only a confidence", self.marginal)
        confidence = torch.as_tensor(confidence).detach().reshape(-1).double().cpu()
        correct = torch.as_tensor(correct).detach().reshape(-1).cpu()
        if correct.numel() != confidence.numel():
            raise bad_value("correct", f"must hold one value per confidence ({confidence.numel()})",
                            f"{correct.numel()} values")
        if confidence.numel() and not bool(((confidence >= 0) & (confidence <= 1)).all()):
            raise bad_value("confidence", "must lie in [0, 1]", float(confidence[
                ~((confidence >= 0) & (confidence <= 1))][0]))
        if groups is not None:
            _, _, groups = flatten_predictions(confidence.unsqueeze(-1), correct, None, groups)
        if confidence.numel() == 0:
            return
        c = correct.double()
        tiny = 1e-45
        nll = -(c * confidence.clamp_min(tiny).log() + (1 - c) * (1 - confidence).clamp_min(tiny).log())
        self._accumulate(confidence, c, nll, (confidence - c).square(), groups=groups)

    def _accumulate(self, confidence: Tensor, correct: Tensor, nll: Tensor, brier: Tensor, *,
                    groups: Optional[Tensor] = None) -> None:
        counts, conf_sums, correct_sums = bin_sums(confidence, correct, self.n_bins)
        self.counts += counts
        self.conf_sums += conf_sums
        self.correct_sums += correct_sums
        nll, brier = nll.detach().double(), brier.detach().double()
        self.nll_sum += float(nll.sum())
        self.brier_sum += float(brier.sum())
        if self.bootstrap:
            self._accumulate_replicates(*(x.detach().double().cpu()
                                          for x in (confidence, correct, nll, brier)), groups)
        if self.adaptive:
            self._values.append((confidence.detach().double().cpu(), correct.detach().cpu()))

    def _accumulate_replicates(self, confidence: Tensor, correct: Tensor, nll: Tensor,
                               brier: Tensor, groups: Optional[Tensor]) -> None:
        """Add ``weights (B x G) @ table (G x columns)``: the per-group sums of this batch,
        weighted by every group's replicate weights (drawn once per group and update)."""
        n, nb = confidence.numel(), self.n_bins
        if groups is None:
            ids = torch.arange(self.positions, self.positions + n)
            of_prediction, stream = torch.arange(n), POSITION_STREAM
            self.positions += n
        else:
            ids, of_prediction = torch.unique(groups.cpu(), return_inverse=True)
            stream = GROUP_STREAM
        width = 3 * nb + 2
        index = bin_index(confidence, nb)
        columns = torch.stack([index, index + nb, index + 2 * nb, torch.full_like(index, 3 * nb),
                               torch.full_like(index, 3 * nb + 1)]) + of_prediction * width
        values = torch.stack([torch.ones_like(confidence), confidence, correct, nll, brier])
        table = torch.zeros(ids.numel() * width, dtype=torch.float64)
        table = table.index_add_(0, columns.reshape(-1), values.reshape(-1)).view(-1, width)
        step = max(1, WEIGHTS_AT_ONCE // self.bootstrap)
        for start in range(0, ids.numel(), step):
            weights = poisson_weights(self.seed, ids[start:start + step], self.bootstrap, stream)
            self.replicate_sums.addmm_(weights, table[start:start + step])

    def _accumulate_classes(self, probs: Tensor, target: Tensor) -> None:
        sums = class_bin_sums(probs, target, self.n_bins)
        if self.class_sums is None:
            self.class_sums = sums
        elif self.class_sums.shape != sums.shape:
            raise bad_value("logits", f"must have as many classes as before ({self.class_sums.size(1)})",
                            sums.size(1))
        else:
            self.class_sums += sums

    def merge(self, other: "CalibrationStats") -> "CalibrationStats":
        """A new ``CalibrationStats`` holding both sets of predictions (exact, replicates too)."""
        if other.n_bins != self.n_bins:
            raise ValueError(f"cannot merge statistics with {self.n_bins} and {other.n_bins} bins")
        if other.adaptive != self.adaptive:
            raise ValueError(f"cannot merge statistics with adaptive={self.adaptive} and "
                             f"adaptive={other.adaptive}: the adaptive ECE needs every "
                             f"prediction's confidence from both")
        for name in ("bootstrap", "seed", "marginal"):
            if getattr(other, name) != getattr(self, name):
                raise bad_value(name, f"merged statistics must share it ({getattr(self, name)})",
                                getattr(other, name))
        if self.bootstrap and self.positions and other.positions:
            raise bad_value("groups", "merging bootstrap statistics needs explicit group ids "
                            "(running positions repeat between shards)", "None on both sides")
        merged = CalibrationStats(self.n_bins, bootstrap=self.bootstrap, seed=self.seed,
                                  adaptive=self.adaptive, marginal=self.marginal)
        merged.counts = self.counts + other.counts
        merged.conf_sums = self.conf_sums + other.conf_sums
        merged.correct_sums = self.correct_sums + other.correct_sums
        merged.nll_sum = self.nll_sum + other.nll_sum
        merged.brier_sum = self.brier_sum + other.brier_sum
        merged.replicate_sums = self.replicate_sums + other.replicate_sums
        merged.positions = self.positions + other.positions
        if self.class_sums is None or other.class_sums is None:
            one = other.class_sums if self.class_sums is None else self.class_sums
            merged.class_sums = None if one is None else one.clone()
        elif self.class_sums.shape != other.class_sums.shape:
            raise bad_value("other", f"must have {self.class_sums.size(1)} classes",
                            other.class_sums.size(1))
        else:
            merged.class_sums = self.class_sums + other.class_sums
        if merged.adaptive:
            merged._values = self._values + other._values
        return merged

    __add__ = merge

    @classmethod
    def from_sums(cls, counts, conf_sums, correct_sums, nll_sum: float = 0.0,
                  brier_sum: float = 0.0, *, replicate_sums=None, seed: int = 0) -> "CalibrationStats":
        """Rebuild statistics from per-bin sums (e.g. summed fairseq logging outputs or
        all-reduced workers); ``replicate_sums`` (B x (3 n_bins + 2)) restores the bootstrap."""
        n_bins = len(counts)
        replicates = 0 if replicate_sums is None else len(replicate_sums)
        stats = cls(n_bins, bootstrap=replicates, seed=seed)
        stats.counts = torch.as_tensor(counts, dtype=torch.float64).clone()
        stats.conf_sums = torch.as_tensor(conf_sums, dtype=torch.float64).clone()
        stats.correct_sums = torch.as_tensor(correct_sums, dtype=torch.float64).clone()
        stats.nll_sum, stats.brier_sum = float(nll_sum), float(brier_sum)
        if replicate_sums is not None:
            replicate_sums = torch.as_tensor(replicate_sums, dtype=torch.float64).clone()
            if replicate_sums.shape != stats.replicate_sums.shape:
                raise bad_value("replicate_sums", f"must have shape (B, {3 * n_bins + 2})",
                                tuple(replicate_sums.shape))
            stats.replicate_sums = replicate_sums
        return stats

    # -- results ------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self.counts.sum())

    def _metric(self, metric: str) -> float:
        return float(metric_from_sums(metric, self.counts, self.conf_sums, self.correct_sums,
                                      torch.tensor(self.nll_sum, dtype=torch.float64),
                                      torch.tensor(self.brier_sum, dtype=torch.float64)))

    def ece(self) -> float:
        return self._metric("ece")

    def mce(self) -> float:
        return self._metric("mce")

    def debiased_ce2(self) -> float:
        """Debiased squared calibration error (Kumar et al. 2019, "Verified Uncertainty
        Calibration"), from the equal-width bins: see :func:`metric_from_sums`."""
        return self._metric("debiased_ce2")

    def accuracy(self) -> float:
        return self._metric("accuracy")

    def confidence(self) -> float:
        return self._metric("confidence")

    def nll(self) -> float:
        """Mean negative log-likelihood of the target, in nats."""
        return self._metric("nll")

    def brier(self) -> float:
        """Mean multi-class Brier score ``sum_k (p_k - y_k)^2``."""
        return self._metric("brier")

    def marginal_ece(self) -> float:
        """All-class (marginal) ECE: every class probability binned, not only the top one.

        Per class ``k`` and equal-width bin ``b`` of ``p_k``: ``P_kb`` the sum of ``p_k`` and
        ``Y_kb`` the number of predictions with target ``k``; over ``N`` predictions and ``K``
        classes (every class of the logits, predicted or not), the uniform average of per-class
        ECEs (the "static calibration error" of Nixon et al. 2019)::

            marginal_ece = (1/K) sum_k sum_b |Y_kb - P_kb| / N
        """
        if not self.marginal:
            raise bad_value("marginal", "marginal_ece needs CalibrationStats(..., marginal=True)",
                            self.marginal)
        if self.class_sums is None or self.count() == 0:
            return float("nan")
        _, prob_sums, label_sums = self.class_sums
        return float((label_sums - prob_sums).abs().sum() / (self.class_sums.size(1) * self.count()))

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

    # -- intervals ----------------------------------------------------------------------------
    def replicate_values(self, metric: str = "ece") -> Tensor:
        """``metric`` of each of the ``bootstrap`` replicates (nan for an empty replicate)."""
        if metric not in METRICS:
            raise bad_value("metric", f"must be one of {', '.join(METRICS)}", repr(metric))
        if not self.bootstrap:
            raise bad_value("bootstrap", "an interval needs CalibrationStats(..., bootstrap=B) "
                            "with B >= 1", self.bootstrap)
        sums, nb = self.replicate_sums, self.n_bins
        return metric_from_sums(metric, sums[:, :nb], sums[:, nb:2 * nb], sums[:, 2 * nb:3 * nb],
                                sums[:, 3 * nb], sums[:, 3 * nb + 1])

    def interval(self, metric: str = "ece", level: float = 0.95) -> tuple[float, float]:
        """Percentile bootstrap interval of ``metric`` (one of :data:`METRICS`) at ``level``."""
        values = self.replicate_values(metric)
        return percentile_interval(values, check_open_unit("level", level))

    def ece_interval(self, level: float = 0.95) -> tuple[float, float]:
        return self.interval("ece", level)

    def bin_accuracy_intervals(self, level: float = 0.95) -> list[Optional[tuple[float, float]]]:
        """Per bin, an interval of its accuracy ``A_b / n_b`` (None for an empty bin): the
        percentile interval of the replicates' ratios with ``bootstrap``; otherwise the Wilson
        score interval of ``A_b`` successes in ``n_b`` independent trials (which ignores that
        predictions of one group are correlated)."""
        level = check_open_unit("level", level)
        nb = self.n_bins
        if self.bootstrap:
            sums = self.replicate_sums
            ratios = sums[:, 2 * nb:3 * nb] / sums[:, :nb]  # nan where a replicate's bin is empty
            return [percentile_interval(ratios[:, b], level) if self.counts[b] else None
                    for b in range(nb)]
        z = NormalDist().inv_cdf((1.0 + level) / 2.0)
        intervals = []
        for n, a in zip(self.counts.tolist(), self.correct_sums.tolist()):
            if not n:
                intervals.append(None)
                continue
            p = a / n
            centre = (p + z * z / (2 * n)) / (1 + z * z / n)
            half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
            intervals.append((max(0.0, centre - half), min(1.0, centre + half)))
        return intervals

    # -- reports ------------------------------------------------------------------------------
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

    def to_dict(self, level: float = 0.95) -> dict:
        """Every metric, JSON-ready; with ``bootstrap``, ``intervals[metric] = [low, high]`` at
        ``interval_level`` and ``replicates[metric]``: the metric in each replicate (``None`` for
        an empty one), so that two runs scored on the same groups with the same seed can be
        paired later (:func:`paired_replicate_interval`)."""
        def finite(x: float):
            return x if math.isfinite(x) else None
        result = {
            "n_bins": self.n_bins, "count": self.count(), "ece": finite(self.ece()),
            "mce": finite(self.mce()), "debiased_ce2": finite(self.debiased_ce2()),
            "nll": finite(self.nll()), "nll_base2": finite(self.nll() / math.log(2)),
            "brier": finite(self.brier()), "accuracy": finite(self.accuracy()),
            "confidence": finite(self.confidence()),
        }
        if self.adaptive:
            result["adaptive_ece"] = finite(self.adaptive_ece())
        if self.marginal:
            result["marginal_ece"] = finite(self.marginal_ece())
        if self.bootstrap:
            result.update(bootstrap=self.bootstrap, seed=self.seed,
                          interval_level=check_open_unit("level", level),
                          intervals={m: [finite(x) for x in self.interval(m, level)] for m in METRICS},
                          replicates={m: [finite(x) for x in self.replicate_values(m).tolist()]
                                      for m in METRICS})
        result["bins"] = self.bins()
        return result

    def summary(self, temperature: float = 1.0) -> str:
        """One log line, e.g. ``Calibration | T 1.00 | bins 15 | tokens N | ECE ... | ...``;
        with ``bootstrap``, the ECE is followed by its 95% interval: ``ECE 0.0550 [0.0490, 0.0610]``."""
        ece = f"{self.ece():.4f}"
        if self.bootstrap:
            ece += " [{:.4f}, {:.4f}]".format(*self.ece_interval())
        return (f"Calibration | T {temperature:.2f} | bins {self.n_bins} | tokens {self.count()} | "
                f"ECE {ece} | MCE {self.mce():.4f} | NLL {self.nll():.4f} | "
                f"Brier {self.brier():.4f} | acc {self.accuracy():.4f} | conf {self.confidence():.4f}")


def paired_interval(a: CalibrationStats, b: CalibrationStats, metric: str = "ece",
                    level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(a) - metric(b)`` over paired replicates.

    ``a`` and ``b`` must have scored the same groups with the same ``seed`` and ``bootstrap``
    (replicate ``r`` of both then weights every group alike).  Explicit group ids cannot be
    compared afterwards, so that part is the caller's promise; running positions (``groups=None``)
    pair only when both saw the same number of predictions.
    """
    for name in ("bootstrap", "seed", "positions"):
        if getattr(a, name) != getattr(b, name):
            raise bad_value("b", f"must be paired with a: same {name} ({getattr(a, name)})",
                            getattr(b, name))
    difference = a.replicate_values(metric) - b.replicate_values(metric)
    return percentile_interval(difference, check_open_unit("level", level))


def paired_replicate_interval(a: dict, b: dict, metric: str = "ece",
                              level: float = 0.95) -> tuple[float, float]:
    """:func:`paired_interval` from two :meth:`CalibrationStats.to_dict` results (JSON files):
    the percentile interval of ``replicates[metric]`` of ``a`` minus those of ``b``, replicate by
    replicate.  Both must hold replicates of the same ``bootstrap`` and ``seed``."""
    for name in ("bootstrap", "seed"):
        if a.get(name) is None or a.get(name) != b.get(name):
            raise bad_value("b", f"must be paired with a: same {name} ({a.get(name)})", b.get(name))
    return paired_difference_interval(a["replicates"][metric], b["replicates"][metric],
                                      check_open_unit("level", level))
