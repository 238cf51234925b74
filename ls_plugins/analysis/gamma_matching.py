"""Distillation at equal gamma (paper section 4, Fig. 5): the temperature that gives a target gamma.

A teacher's equivalent label smoothing at temperature ``T`` is
``gamma(T) = E[sum_k (1 - y_k) p^t_k(T) K/(K-1)]`` (:func:`ls_plugins.losses.equivalent_smoothing`).
To compare distillation from a hard-target teacher with label smoothing ``alpha``, we distil at the
``T`` where the teacher's ``gamma(T)`` on the training split equals ``alpha``.

``gamma`` runs from ``(1 - accuracy) K/(K-1)`` as ``T -> 0`` (the teacher's arg-max, one-hot) to 1
as ``T -> infinity`` (uniform), and grows with ``T`` for a teacher that ranks the correct class
first; targets outside that range cannot be reached.  :func:`bisect_temperature` finds ``T`` by
bisection on ``log T`` from any ``gamma_at(T)`` callable, so the vision trainer and the fairseq
tools can stream ``gamma`` over a whole split batch by batch (``losses.incorrect_mass`` sums);
:func:`temperature_for_gamma` is the in-memory form.  ``gamma_at`` must be deterministic (fixed
augmentation seeds): bisection needs the same ``T`` to give the same ``gamma``.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

from ..cli import bad_value, check_open_unit, check_positive
from ..losses import equivalent_smoothing

EXPANSION_FACTOR = 4.0  # a bracket end that misses the target moves by this factor per step


class TemperatureMatch(NamedTuple):
    temperature: float  # T with |gamma(T) - target| <= tol
    gamma: float  # gamma_at(temperature)
    evaluations: int  # temperatures at which gamma_at was called (each may be a pass over a split)


def bisect_temperature(gamma_at: Callable[[float], float], target_gamma: float, *,
                       lo: float = 0.5, hi: float = 8.0, tol: float = 1e-3,
                       max_expansions: int = 10, max_iterations: int = 60) -> TemperatureMatch:
    """The temperature at which ``gamma_at(T)`` is within ``tol`` of ``target_gamma``.

    ``[lo, hi]`` is the starting bracket.  If ``gamma_at(lo)`` already exceeds the target, the
    bracket moves down (``hi`` takes ``lo``'s place, ``lo`` is divided by 4), and if
    ``gamma_at(hi)`` is still below it the bracket moves up, at most ``max_expansions`` times;
    then the bracket is halved in ``log T`` until ``gamma`` is within ``tol``.  The result
    counts the temperatures tried in ``evaluations``.

    Raises :class:`ls_plugins.cli.UsageError` (a ``ValueError``) naming ``gamma`` when the target
    is not in (0, 1) or is out of reach (a teacher that is wrong on a fraction ``e`` of the split
    never goes below ``gamma = e K/(K-1)``; the bracket also stops moving where gamma stops
    falling or rising, or after ``max_expansions`` moves), ``gamma_at`` when ``gamma(lo) >
    gamma(hi)`` at the start, ``lo``/``hi``/``tol`` when they are not positive (or ``lo >= hi``),
    and ``tol`` when ``max_iterations`` halvings do not meet it (a noisy ``gamma_at``).
    """
    target = check_open_unit("gamma", target_gamma)
    lo, hi, tol = check_positive("lo", lo), check_positive("hi", hi), check_positive("tol", tol)
    if lo >= hi:
        raise bad_value("lo", f"must be below hi={hi:g}", lo)
    seen: dict[float, float] = {}  # temperature -> gamma, every evaluation

    def gamma(temperature: float) -> float:
        seen[temperature] = float(gamma_at(temperature))
        return seen[temperature]

    def unreachable() -> ValueError:
        (t_min, g_min), (t_max, g_max) = (min(seen.items(), key=lambda item: item[1]),
                                          max(seen.items(), key=lambda item: item[1]))
        return bad_value("gamma", "must be reachable by this teacher, whose gamma ranged from "
                         f"{g_min:.4f} (T={t_min:.4g}) to {g_max:.4f} (T={t_max:.4g})", target)

    g_lo, g_hi = gamma(lo), gamma(hi)
    if g_lo > g_hi + tol:
        raise bad_value("gamma_at", "must increase with the temperature",
                        f"gamma({lo:.4g})={g_lo:.4f} > gamma({hi:.4g})={g_hi:.4f}")
    for _ in range(max_expansions):
        if g_lo > target + tol:  # move the bracket down, while gamma still falls
            lower = lo / EXPANSION_FACTOR
            if gamma(lower) >= g_lo:
                raise unreachable()
            hi, g_hi, lo, g_lo = lo, g_lo, lower, seen[lower]
        elif g_hi < target - tol:  # move it up, while gamma still rises
            higher = hi * EXPANSION_FACTOR
            if gamma(higher) <= g_hi:
                raise unreachable()
            lo, g_lo, hi, g_hi = hi, g_hi, higher, seen[higher]
        else:
            break
    for t, g in ((lo, g_lo), (hi, g_hi)):
        if abs(g - target) <= tol:
            return TemperatureMatch(t, g, len(seen))
    if not g_lo < target < g_hi:
        raise unreachable()
    for _ in range(max_iterations):
        middle = math.sqrt(lo * hi)
        g = gamma(middle)
        if abs(g - target) <= tol:
            return TemperatureMatch(middle, g, len(seen))
        if g < target:
            lo = middle
        else:
            hi = middle
    raise bad_value("tol", f"must be met within {max_iterations} halvings, which ended at T in "
                    f"[{lo:.6g}, {hi:.6g}] (is gamma_at noisy or discontinuous?)", tol)


def temperature_for_gamma(teacher_logits, target, gamma: float, *, lo: float = 0.5,
                          hi: float = 8.0, tol: float = 1e-3,
                          ignore_index: Optional[int] = None) -> float:
    """The ``T`` at which the teacher's ``equivalent_smoothing(teacher_logits, target, T)`` is
    within ``tol`` of ``gamma`` (see :func:`bisect_temperature` for the search and its errors).

    >>> import torch
    >>> logits = torch.tensor([[4.0, 0.0, 0.0]], dtype=torch.float64)  # gamma(T) = 3 / (exp(4 / T) + 2)
    >>> round(temperature_for_gamma(logits, torch.tensor([0]), 3 / (math.e ** 2 + 2), tol=1e-9), 6)
    2.0
    """
    return bisect_temperature(
        lambda temperature: equivalent_smoothing(teacher_logits, target, temperature, ignore_index),
        gamma, lo=lo, hi=hi, tol=tol).temperature
