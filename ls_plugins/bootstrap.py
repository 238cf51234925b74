"""Poisson bootstrap weights that any batch, shard or worker draws alike, and percentile intervals.

Every group ``g`` (an integer id: a sentence, an image) gets ``B`` replicate weights
``w[r, g] ~ Poisson(1)``, ``r = 0 .. B-1``.  A weight is a pure function of
``(seed, stream, g, r)``, with no generator state: replicate sums computed batch by batch, shard
by shard or worker by worker add up to exactly the sums over all data at once, and two models
scored on the same groups with the same seed get the same weights (paired replicates).

Counter-based generation (vectorised, no per-group generator):

    key[g]  = mix(mix(seed + stream * PHI) + g * PHI)
    u[r, g] = mix(key[g] + (r + 1) * PHI)              a uniform 64-bit integer
    w[r, g] = #{k >= 0 : u[r, g] >= 2^64 * F(k)}        inverse CDF of Poisson(1)

with ``mix`` the splitmix64 finaliser (Steele et al. 2014), ``PHI = 0x9E3779B97F4A7C15`` and
``F(k) = exp(-1) * sum_{j <= k} 1/j!`` the Poisson(1) CDF, for every ``k`` whose ``F(k)`` is
below 1 in float64 (so weights stop at 18; P(w > 17) is about 1e-16).  Arithmetic is numpy
``uint64``, which wraps modulo 2^64 by definition.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

PHI = np.uint64(0x9E3779B97F4A7C15)
_MUL1, _MUL2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _poisson_thresholds() -> np.ndarray:
    thresholds, term, k = [], math.exp(-1.0), 0
    cdf = term
    while cdf < 1.0:
        thresholds.append(int(cdf * 2.0 ** 64))
        k += 1
        term /= k
        cdf += term
    return np.array(thresholds, dtype=np.uint64)


POISSON_THRESHOLDS = _poisson_thresholds()


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a ``uint64`` array (returned)."""
    x ^= x >> np.uint64(30)
    x *= _MUL1
    x ^= x >> np.uint64(27)
    x *= _MUL2
    x ^= x >> np.uint64(31)
    return x


def poisson_weights(seed: int, groups: Tensor, replicates: int, stream: int = 0) -> Tensor:
    """``replicates x len(groups)`` float64 Poisson(1) weights of the integer ids ``groups``.

    ``stream`` separates id spaces that must not share weights (e.g. explicit group ids and
    running positions).
    """
    ids = groups.detach().reshape(-1).to(device="cpu", dtype=torch.int64).numpy().view(np.uint64)
    base = _mix(np.array([seed % 2 ** 64], dtype=np.uint64)
                + np.array([stream % 2 ** 64], dtype=np.uint64) * PHI)
    key = _mix(base + ids * PHI)
    counter = np.arange(1, replicates + 1, dtype=np.uint64) * PHI
    uniform = _mix(key[None, :] + counter[:, None])
    weights = np.searchsorted(POISSON_THRESHOLDS, uniform, side="right")
    return torch.from_numpy(weights).to(torch.float64)


def paired_difference_interval(a, b, level: float) -> tuple[float, float]:
    """:func:`percentile_interval` of ``a[r] - b[r]`` over paired replicates ``r`` (sequences of
    floats as read back from JSON: ``None``, an empty replicate, is left out like nan)."""
    def values(replicates) -> Tensor:
        return torch.tensor([math.nan if x is None else x for x in replicates], dtype=torch.float64)
    return percentile_interval(values(a) - values(b), level)


def percentile_interval(values: Tensor, level: float) -> tuple[float, float]:
    """The ``(1 - level)/2`` and ``(1 + level)/2`` quantiles of ``values`` (linear interpolation,
    numpy's default), ignoring nan replicates (those with no data); nan when all are nan."""
    values = values.detach().double().cpu().numpy()
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(low), float(high)
