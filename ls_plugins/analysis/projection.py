"""Penultimate-layer geometry (paper section 2, Fig. 1): template planes, projections, tightness.

The logit of class ``k`` is ``x~ . w~_k`` with ``x~ = x (+) 1`` (the activations with a 1 appended)
and ``w~_k = w_k (+) b_k`` (the last layer's weight row with its bias appended): the *template*
of class ``k``.  As ``||x~ - w~_k||^2 = x~.x~ - 2 x~.w~_k + w~_k.w~_k``, a logit measures how close
``x~`` lies to a template.  Label smoothing pulls each training example close to its own
template and *equally distant* from the wrong ones; these functions measure and show it:

* :func:`template_plane` and :func:`project`: the plane through three classes' templates and the
  orthogonal projection of activations onto it, in the plane's own 2-D coordinates (Fig. 1);
* :func:`cluster_tightness`: within-class over between-class spread of the activations, and
  :func:`cluster_tightness_replicates` / :func:`tightness_bootstrap_fields`: its Poisson
  bootstrap over examples (paired between models that saw the same examples);
* :func:`wrong_template_distance_cv`: how unequal an example's distances to the wrong
  classes' templates are (0 = equidistant).

Pure torch, computed in float64 on the CPU.  Bad input raises :class:`ls_plugins.cli.UsageError`
(a ``ValueError``) naming the argument.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..bootstrap import percentile_interval, poisson_weights
from ..calibration import GROUP_STREAM
from ..cli import bad_value, check_int_at_least
from .checks import class_indices, float64_tensor, label_vector

ROWS_PER_CHUNK = 4096  # distances are computed for this many examples at a time
INTERVAL_LEVEL = 0.95


def templates(weight, bias=None) -> Tensor:
    """The class templates ``w~_k = w_k (+) b_k``: ``K x (D+1)``, float64.

    ``weight``: the last layer's ``K x D`` weight; ``bias``: its ``K`` biases, or ``None`` for a
    layer without bias (then 0 is appended: the appended coordinate is the same for every
    template, so planes and distances are those of the ``D``-dim weights alone).
    """
    weight = float64_tensor("weight", weight, 2)
    num_classes = weight.size(0)
    if bias is None:
        bias = torch.zeros(num_classes, dtype=torch.float64)
    else:
        bias = torch.as_tensor(bias)
        if bias.dim() != 1 or bias.numel() != num_classes:
            raise bad_value("bias", f"must be None or a vector of K={num_classes} values (one per "
                            "row of weight)", f"shape {tuple(bias.shape)}")
        bias = float64_tensor("bias", bias, 1)
    return torch.cat([weight, bias.unsqueeze(1)], dim=1)


def with_ones(activations) -> Tensor:
    """``x~ = x (+) 1`` for each row of the ``N x D`` activations: ``N x (D+1)``, float64."""
    x = float64_tensor("activations", activations, 2)
    return torch.cat([x, x.new_ones(x.size(0), 1)], dim=1)


def template_plane(weight, bias, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The plane through the templates of three classes: ``(origin, basis)``.

    ``origin`` (``D+1``) is the centroid of the three templates ``t_0, t_1, t_2`` (of
    ``classes[0], classes[1], classes[2]``); ``basis`` (``2 x D+1``) is orthonormal, from a QR
    (Gram-Schmidt) factorisation of ``[t_1 - t_0, t_2 - t_0]`` in float64: its first row points
    from ``t_0`` to ``t_1``, its second completes the plane towards ``t_2``.  A different order of
    the classes gives the same plane (the same origin and projector ``basis.T @ basis``); the
    projected points then differ only by a rotation or reflection.

    >>> w = torch.tensor([[0., 0., 0.], [3., 0., 0.], [0., 4., 0.]])  # a 3-4-5 triangle
    >>> origin, basis = template_plane(w, torch.ones(3), [0, 1, 2])
    >>> points = project(w, origin, basis)  # activations equal to the templates
    >>> torch.cdist(points, points)
    tensor([[0., 3., 4.],
            [3., 0., 5.],
            [4., 5., 0.]], dtype=torch.float64)
    """
    all_templates = templates(weight, bias)
    chosen = class_indices("classes", classes, all_templates.size(0), exactly=3)
    plane_templates = all_templates[chosen]
    differences = (plane_templates[1:] - plane_templates[0]).T  # (D+1) x 2
    q, r = torch.linalg.qr(differences)
    scale = differences.norm(dim=0).max()
    if not (r.diagonal().abs() > 1e-10 * scale).all():
        raise bad_value("classes", "must name three classes whose templates span a plane (not "
                        "collinear or coincident)", chosen)
    basis = (q * r.diagonal().sign()).T  # rows oriented along t_1 - t_0 and towards t_2
    return plane_templates.mean(dim=0), basis


def project(activations, origin: Tensor, basis: Tensor) -> Tensor:
    """Plane coordinates of the ``N x D`` activations: ``(x~ - origin) @ basis.T``, ``N x 2``.

    ``x~ = x (+) 1`` (the 1 is appended here); ``origin`` and ``basis`` come from
    :func:`template_plane`.  A template's own ``w~_k`` lands on that template's point.
    """
    origin = float64_tensor("origin", origin, 1)
    basis = float64_tensor("basis", basis, 2)
    if basis.shape != (2, origin.numel()):
        raise bad_value("basis", f"must be 2 x {origin.numel()} (the size of origin)",
                        f"shape {tuple(basis.shape)}")
    x = float64_tensor("activations", activations, 2)
    if x.size(1) + 1 != origin.numel():
        raise bad_value("activations", f"must have {origin.numel() - 1} columns (the templates' "
                        "dimension without the bias)", f"shape {tuple(x.shape)}")
    return (with_ones(x) - origin) @ basis.T


def cluster_tightness(activations, labels) -> float:
    """Within-class over between-class spread of the activations (smaller = tighter clusters).

    ``mean_i ||x_i - mu_{y_i}||^2 / mean_{a != b} ||mu_a - mu_b||^2`` over the classes present in
    ``labels`` (at least two), ``mu_c`` the mean activation of class ``c``.  The numerator weighs
    every example equally; the denominator every ordered pair of distinct classes.

    >>> cluster_tightness([[0.], [2.], [10.], [12.]], [0, 0, 1, 1])
    0.01
    """
    x = float64_tensor("activations", activations, 2)
    y = label_vector("labels", labels, x.size(0))
    present, index = torch.unique(y, return_inverse=True)
    num_present = present.numel()
    if num_present < 2:
        raise bad_value("labels", "must hold at least two distinct classes", present.tolist())
    counts = torch.bincount(index, minlength=num_present).to(torch.float64)
    means = torch.zeros(num_present, x.size(1), dtype=torch.float64).index_add_(0, index, x)
    means /= counts.unsqueeze(1)
    within = (x - means[index]).pow(2).sum(dim=1).mean()
    # sum over ordered pairs of ||mu_a - mu_b||^2 = 2 C sum_a ||mu_a - mean(mu)||^2
    between = 2.0 * (means - means.mean(dim=0)).pow(2).sum() / (num_present - 1)
    if between == 0:
        raise bad_value("activations", "class means must differ (between-class spread is 0)",
                        "identical class means")
    return float(within / between)


def cluster_tightness_replicates(activations, labels, ids, bootstrap: int, seed: int) -> Tensor:
    """:func:`cluster_tightness` of each of ``bootstrap`` Poisson-bootstrap replicates: ``(B,)``.

    Example ``i`` gets the weight ``w_ri = poisson_weights(seed, ids, B, GROUP_STREAM)[r, i]``
    (a pure function of ``(seed, ids[i], r)``: two models measured on the same examples under the
    same ids and seed get the same weights, so their replicates pair).  Replicate ``r``::

        mu_rc   = sum_{i: y_i = c} w_ri x_i / n_rc,        n_rc = sum_{i: y_i = c} w_ri
        within  = sum_i w_ri ||x_i - mu_{r,y_i}||^2 / sum_i w_ri
        between = mean over ordered pairs a != b of ||mu_ra - mu_rb||^2
        tightness_r = within / between

    over the classes present in ``labels`` (at least two).  A replicate in which one of them has
    total weight 0 (or whose class means coincide) is nan, which
    :func:`ls_plugins.bootstrap.percentile_interval` ignores.  With every weight 1 this is
    :func:`cluster_tightness`.

    Computed from per-class weighted sums, one matrix product per class: with ``x'`` the
    activations minus their class's (unweighted) mean ``m_c`` (the within-class spread does not
    change under a per-class shift; the shift keeps float64 from cancelling),
    ``S_rc = sum w x'``, ``Q_rc = sum w ||x'||^2``, within-class sum ``Q_rc - ||S_rc||^2 / n_rc``
    and ``mu_rc = m_c + S_rc / n_rc``.
    """
    x = float64_tensor("activations", activations, 2)
    y = label_vector("labels", labels, x.size(0))
    groups = label_vector("ids", ids, x.size(0))
    bootstrap = check_int_at_least("bootstrap", bootstrap, 1)
    seed = check_int_at_least("seed", seed, 0)
    present, index = torch.unique(y, return_inverse=True)
    num_present = present.numel()
    if num_present < 2:
        raise bad_value("labels", "must hold at least two distinct classes", present.tolist())
    weights = poisson_weights(seed, groups, bootstrap, GROUP_STREAM)  # B x N
    counts = torch.empty(bootstrap, num_present, dtype=torch.float64)  # n_rc
    within = torch.zeros(bootstrap, dtype=torch.float64)  # sum_c (Q_rc - ||S_rc||^2 / n_rc)
    means = torch.empty(bootstrap, num_present, x.size(1), dtype=torch.float64)  # mu_rc
    for c in range(num_present):
        members = (index == c).nonzero().squeeze(1)
        centre = x[members].mean(dim=0)
        shifted = x[members] - centre
        w = weights[:, members]
        counts[:, c] = w.sum(dim=1)
        sums = w @ shifted  # S_rc
        squares = w @ shifted.pow(2).sum(dim=1)  # Q_rc
        within += squares - sums.pow(2).sum(dim=1) / counts[:, c]
        means[:, c] = centre + sums / counts[:, c].unsqueeze(1)
    # as in cluster_tightness: sum over ordered pairs = 2 C sum_a ||mu_a - mean(mu)||^2
    between = 2.0 * (means - means.mean(dim=1, keepdim=True)).pow(2).sum(dim=(1, 2)) \
        / (num_present - 1)
    tightness = within / counts.sum(dim=1) / between
    missing_class = (counts == 0).any(dim=1)
    return torch.where(missing_class | (between == 0), torch.nan, tightness)


def tightness_bootstrap_fields(activations, labels, ids, bootstrap: int, seed: int) -> dict:
    """The JSON fields of a tightness's bootstrap, from :func:`cluster_tightness_replicates`:
    ``{"tightness_interval": [lo, hi] (95% percentile interval, None when every replicate is
    nan), "tightness_bootstrap": {"bootstrap": B, "seed": S, "paired": True, "replicates":
    [B values, None for nan]}}``.  ``paired``: the caller measured every model on the same
    ``ids`` (replicate ``r`` of one model minus replicate ``r`` of another is a replicate of the
    difference)."""
    replicates = cluster_tightness_replicates(activations, labels, ids, bootstrap, seed)
    low, high = percentile_interval(replicates, INTERVAL_LEVEL)
    return {"tightness_interval": None if math.isnan(low) else [low, high],
            "tightness_bootstrap": {"bootstrap": bootstrap, "seed": seed, "paired": True,
                                    "replicates": [None if math.isnan(v) else v
                                                   for v in replicates.tolist()]}}


def wrong_template_distance_cv(activations, labels, weight, bias,
                               classes: Optional[Sequence[int]] = None) -> float:
    """How unequal each example's distances to the wrong classes' templates are (0 = equal).

    For example ``i`` with label ``y_i``: the Euclidean distances ``d_ik = ||x~_i - w~_k||`` to
    the templates of the classes ``k != y_i`` among ``classes`` (``x~ = x (+) 1``,
    ``w~_k = w_k (+) b_k``; ``bias=None`` appends 0), and their coefficient of variation
    ``std_k(d_ik) / mean_k(d_ik)`` (population std).  Returns the mean over examples.  Label
    smoothing makes examples equidistant from the wrong templates (paper section 2): a
    smaller value.

    ``classes``: the classes compared (at least three, so at least two wrong ones); ``None`` means
    all ``K``.  Every label must be one of them.
    """
    all_templates = templates(weight, bias)
    num_classes = all_templates.size(0)
    chosen = class_indices("classes", range(num_classes) if classes is None else classes,
                           num_classes, at_least=3)
    x = float64_tensor("activations", activations, 2)
    if x.size(1) + 1 != all_templates.size(1):
        raise bad_value("activations", f"must have {all_templates.size(1) - 1} columns (the "
                        "columns of weight)", f"shape {tuple(x.shape)}")
    y = label_vector("labels", labels, x.size(0))
    position = torch.full((num_classes,), -1, dtype=torch.int64)
    position[chosen] = torch.arange(len(chosen))
    if x.size(0) == 0:
        raise bad_value("activations", "must hold at least one example", "0 rows")
    stray = (y < 0) | (y >= num_classes)
    stray[~stray] = position[y[~stray]] < 0
    if stray.any():
        raise bad_value("labels", "must all be among classes",
                        sorted(set(y[stray].tolist()))[:10])
    chosen_templates = all_templates[chosen]
    total = 0.0
    for start in range(0, x.size(0), ROWS_PER_CHUNK):
        rows = with_ones(x[start:start + ROWS_PER_CHUNK])
        distances = torch.cdist(rows, chosen_templates,
                                compute_mode="donot_use_mm_for_euclid_dist")
        own = position[y[start:start + ROWS_PER_CHUNK]]
        wrong = torch.ones_like(distances, dtype=torch.bool)
        wrong[torch.arange(rows.size(0)), own] = False
        wrong_distances = distances[wrong].view(rows.size(0), len(chosen) - 1)
        std, mean = torch.std_mean(wrong_distances, dim=1, correction=0)
        total += float((std / mean).sum())
    return total / x.size(0)
