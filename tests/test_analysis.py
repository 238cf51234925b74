"""ls_plugins.analysis (paper sections 2 and 4): exact values against numpy references written here."""
import doctest
import itertools
import math

import numpy as np
import pytest
import torch

from ls_plugins import analysis
from ls_plugins.analysis import (bisect_temperature, cluster_tightness, estimate_mutual_information,
                                 logit_difference, project, template_plane, temperature_for_gamma,
                                 wrong_template_distance_cv)
from ls_plugins.analysis import projection
from ls_plugins.analysis.projection import cluster_tightness_replicates, tightness_bootstrap_fields
from ls_plugins.bootstrap import poisson_weights
from ls_plugins.losses import incorrect_mass, tempered_probs


@pytest.fixture
def layer():
    """A last layer with K=6 classes and D=5 inputs, and 40 activations with labels."""
    rng = np.random.default_rng(0)
    return (rng.normal(size=(6, 5)), rng.normal(size=6), rng.normal(size=(40, 5)),
            rng.integers(0, 6, size=40))


@pytest.mark.parametrize("module", [analysis.projection, analysis.mutual_information,
                                    analysis.gamma_matching])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


def numpy_templates(weight, bias):
    return np.concatenate([weight, bias[:, None]], axis=1)


def numpy_foot(point, plane_templates):
    """The orthogonal projection of ``point`` on the plane through three templates (least squares)."""
    directions = (plane_templates[1:] - plane_templates[0]).T
    coefficients, *_ = np.linalg.lstsq(directions, point - plane_templates[0], rcond=None)
    return plane_templates[0] + directions @ coefficients


def pairwise_distances(points):
    points = np.asarray(points)
    return np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)


# -- projection (Fig. 1) -------------------------------------------------------------------------

def test_template_triangle_keeps_its_side_lengths(layer):
    weight, bias, _, _ = layer
    classes = [4, 1, 2]
    t = numpy_templates(weight, bias)[classes]
    origin, basis = template_plane(torch.tensor(weight), torch.tensor(bias), classes)
    points = ((torch.tensor(t) - origin) @ basis.T).numpy()
    for i, j in itertools.combinations(range(3), 2):
        assert np.linalg.norm(points[i] - points[j]) == pytest.approx(np.linalg.norm(t[i] - t[j]),
                                                                      rel=1e-12)
    np.testing.assert_allclose(basis @ basis.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(origin.numpy(), t.mean(axis=0), atol=1e-12)


def test_projection_is_the_orthogonal_foot_on_the_template_plane(layer):
    weight, bias, activations, _ = layer
    classes = [0, 3, 5]
    t = numpy_templates(weight, bias)[classes]
    points = project(activations, *template_plane(weight, bias, classes)).numpy()
    feet = np.array([numpy_foot(np.append(x, 1.0), t) for x in activations])
    assert points.shape == (40, 2)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1),
                               np.linalg.norm(feet - t.mean(axis=0), axis=1), rtol=1e-10)
    for i, j in [(0, 1), (2, 17), (5, 39)]:
        assert np.linalg.norm(points[i] - points[j]) == pytest.approx(
            np.linalg.norm(feet[i] - feet[j]), rel=1e-10)


def test_activation_equal_to_a_template_lands_on_its_point(layer):
    weight, bias, _, _ = layer
    bias = bias.copy()
    bias[3] = 1.0  # then x (+) 1 with x = w_3 is the template w_3 (+) b_3 itself
    classes = [3, 0, 5]
    origin, basis = template_plane(weight, bias, classes)
    t = numpy_templates(weight, bias)[classes]
    landed = project(weight[3:4], origin, basis)[0]
    template_point = (torch.tensor(t[0]) - origin) @ basis.T
    assert torch.allclose(landed, template_point, atol=1e-12)
    # the point is 0 -> t_0 in the plane: distance to the centroid, and to the others' feet
    assert float(landed.norm()) == pytest.approx(np.linalg.norm(t[0] - t.mean(axis=0)), rel=1e-12)
    other = project(weight[0:1], origin, basis)[0]
    assert float((landed - other).norm()) == pytest.approx(
        np.linalg.norm(t[0] - numpy_foot(np.append(weight[0], 1.0), t)), rel=1e-10)


def test_plane_does_not_depend_on_the_order_of_the_classes(layer):
    weight, bias, activations, _ = layer
    planes = [template_plane(weight, bias, order) for order in itertools.permutations([1, 2, 4])]
    first_origin, first_basis = planes[0]
    first_points = project(activations, first_origin, first_basis)
    for origin, basis in planes[1:]:
        assert torch.allclose(origin, first_origin, atol=1e-12)
        assert torch.allclose(basis.T @ basis, first_basis.T @ first_basis, atol=1e-12)
        points = project(activations, origin, basis)
        np.testing.assert_allclose(pairwise_distances(points), pairwise_distances(first_points),
                                   atol=1e-12)
        assert not torch.allclose(basis, first_basis)  # the coordinates themselves do move


def test_bias_none_projects_the_weights_alone(layer):
    weight, _, activations, _ = layer
    origin, basis = template_plane(weight, None, [0, 1, 2])
    assert torch.equal(basis[:, -1], torch.zeros(2, dtype=torch.float64))
    w3 = weight[[0, 1, 2]]
    points = project(activations, origin, basis).numpy()
    feet = np.array([numpy_foot(x, w3) for x in activations])
    np.testing.assert_allclose(np.linalg.norm(points, axis=1),
                               np.linalg.norm(feet - w3.mean(axis=0), axis=1), rtol=1e-10)


def test_cluster_tightness_against_a_loop_over_class_pairs(layer):
    _, _, activations, labels = layer
    labels = np.where(labels == 2, 0, labels)  # class 2 absent: only the classes present count
    activations = activations + 3.0 * labels[:, None]
    present = sorted(set(labels.tolist()))
    means = {c: activations[labels == c].mean(axis=0) for c in present}
    within = np.mean([np.sum((x - means[y]) ** 2) for x, y in zip(activations, labels)])
    between = np.mean([np.sum((means[a] - means[b]) ** 2)
                       for a in present for b in present if a != b])
    assert cluster_tightness(torch.tensor(activations), torch.tensor(labels)) == pytest.approx(
        within / between, rel=1e-12)
    assert cluster_tightness(activations, labels) == pytest.approx(within / between, rel=1e-12)


def numpy_weighted_tightness(x, y, w):
    """Weighted cluster tightness by hand: one loop over classes and pairs, one over examples."""
    present = sorted(set(y.tolist()))
    if any(w[y == c].sum() == 0 for c in present):
        return math.nan
    means = {c: (w[y == c, None] * x[y == c]).sum(axis=0) / w[y == c].sum() for c in present}
    within = sum(wi * np.sum((xi - means[yi]) ** 2) for xi, yi, wi in zip(x, y, w)) / w.sum()
    between = np.mean([np.sum((means[a] - means[b]) ** 2)
                       for a in present for b in present if a != b])
    return within / between


def test_tightness_replicates_against_a_weighted_loop(layer):
    """Replicate r weighs example i by poisson_weights(seed, ids, B, stream 0)[r, i]: explicit
    ids (not positions), the stream of calibration's explicit group ids; large offsets in the
    activations (the per-class shift keeps float64 exact)."""
    _, _, activations, labels = layer
    labels = labels % 3  # about 13 examples a class: no class is left out of a replicate
    activations = activations + 1e3 + 3.0 * labels[:, None]
    ids = torch.tensor(1000 + 7 * np.arange(40)[::-1].copy())
    got = cluster_tightness_replicates(activations, labels, ids, 6, 11)
    weights = poisson_weights(11, ids, 6, 0).numpy()
    assert not np.allclose(weights, 1.0) and got.shape == (6,)
    expected = [numpy_weighted_tightness(activations, labels, w) for w in weights]
    assert np.isfinite(expected).all()
    assert got.numpy() == pytest.approx(expected, rel=1e-9)
    assert not torch.equal(got, cluster_tightness_replicates(activations, labels, ids, 6, 12))
    assert not torch.equal(got, cluster_tightness_replicates(activations, labels, ids + 1, 6, 11))


def test_tightness_replicates_with_unit_weights_are_cluster_tightness(layer, monkeypatch):
    _, _, activations, labels = layer
    activations = activations + 3.0 * labels[:, None]
    monkeypatch.setattr(projection, "poisson_weights",
                        lambda seed, groups, replicates, stream: torch.ones(replicates, len(groups),
                                                                           dtype=torch.float64))
    got = cluster_tightness_replicates(activations, labels, torch.arange(40), 3, 0)
    assert got.tolist() == pytest.approx([cluster_tightness(activations, labels)] * 3, rel=1e-12)


def test_tightness_replicate_without_a_class_is_nan_and_left_out_of_the_interval():
    """A class of one example is absent from the replicates where its weight is 0: those are nan
    (None in the JSON fields) and the interval is the percentile interval of the others."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 2)) + np.repeat([[0, 0], [4, 0], [0, 4]], [4, 4, 1], axis=0)
    y = np.repeat([0, 1, 2], [4, 4, 1])
    ids = torch.arange(9)
    got = cluster_tightness_replicates(x, y, ids, 40, 5).numpy()
    weights = poisson_weights(5, ids, 40, 0).numpy()
    absent = weights[:, 8] == 0
    assert 0 < absent.sum() < 40
    assert np.isnan(got[absent]).all() and np.isfinite(got[~absent]).all()
    assert got[~absent] == pytest.approx([numpy_weighted_tightness(x, y, w) for w in weights[~absent]],
                                         rel=1e-9)
    fields = tightness_bootstrap_fields(x, y, ids, 40, 5)
    assert fields["tightness_interval"] == pytest.approx(
        np.quantile(got[~absent], [0.025, 0.975]).tolist(), rel=1e-12)
    assert fields["tightness_bootstrap"]["bootstrap"] == 40 and fields["tightness_bootstrap"]["seed"] == 5
    replicates = fields["tightness_bootstrap"]["replicates"]
    assert [v is None for v in replicates] == absent.tolist()
    assert [v for v in replicates if v is not None] == got[~absent].tolist()


def test_wrong_template_distance_cv_against_a_loop(layer):
    weight, bias, activations, labels = layer
    t = numpy_templates(weight, bias)

    def reference(rows, row_labels, classes):
        cvs = []
        for x, y in zip(rows, row_labels):
            d = [np.linalg.norm(np.append(x, 1.0) - t[k]) for k in classes if k != y]
            cvs.append(np.std(d) / np.mean(d))
        return np.mean(cvs)

    assert wrong_template_distance_cv(activations, labels, weight, bias) == pytest.approx(
        reference(activations, labels, range(6)), rel=1e-12)
    keep = np.isin(labels, [1, 3, 4])
    assert wrong_template_distance_cv(activations[keep], labels[keep], weight, bias,
                                      classes=[4, 1, 3]) == pytest.approx(
        reference(activations[keep], labels[keep], [1, 3, 4]), rel=1e-12)


def test_wrong_template_distance_cv_chunks_agree(layer, monkeypatch):
    weight, bias, activations, labels = layer
    whole = wrong_template_distance_cv(activations, labels, weight, bias)
    monkeypatch.setattr(analysis.projection, "ROWS_PER_CHUNK", 7)
    assert wrong_template_distance_cv(activations, labels, weight, bias) == pytest.approx(whole,
                                                                                         rel=1e-12)


def test_examples_on_a_regular_simplex_are_equidistant_from_wrong_templates():
    weight = torch.eye(4, dtype=torch.float64) * 2.0  # a regular simplex, bias 1 on every template
    bias = torch.ones(4, dtype=torch.float64)
    at_own_template = weight.clone()
    assert wrong_template_distance_cv(at_own_template, [0, 1, 2, 3], weight, bias) == pytest.approx(
        0.0, abs=1e-12)
    off_centre = at_own_template + torch.tensor([0.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    # examples 0, 2, 3 moved towards template 1: distances 2.5, sqrt(8.25), sqrt(8.25);
    # example 1 moved away from the others along its own axis: still equidistant
    d = np.array([2.5, math.sqrt(8.25), math.sqrt(8.25)])
    assert wrong_template_distance_cv(off_centre, [0, 1, 2, 3], weight, bias) == pytest.approx(
        0.75 * d.std() / d.mean(), rel=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda w, b, x, y: template_plane(w, b, [0, 1]), "classes: must be exactly 3 distinct"),
    (lambda w, b, x, y: template_plane(w, b, [0, 1, 1]), "classes: must be exactly 3 distinct"),
    (lambda w, b, x, y: template_plane(w, b, [0, 1, 6]), "classes: class indices must lie in [0, 6)"),
    (lambda w, b, x, y: template_plane(w, b, [0, 1.5, 2]), "classes: must be a sequence of integer"),
    (lambda w, b, x, y: template_plane(w, b[:5], [0, 1, 2]), "bias: must be None or a vector of K=6"),
    (lambda w, b, x, y: template_plane(w[0], b, [0, 1, 2]), "weight: must be a 2-D array"),
    (lambda w, b, x, y: template_plane(np.stack([w[0], 2 * w[0], 3 * w[0]]), None, [0, 1, 2]),
     "classes: must name three classes whose templates span a plane"),
    (lambda w, b, x, y: project(x[:, :4], *template_plane(w, b, [0, 1, 2])),
     "activations: must have 5 columns"),
    (lambda w, b, x, y: project(x, np.zeros(6), np.zeros((3, 6))), "basis: must be 2 x 6"),
    (lambda w, b, x, y: cluster_tightness(x, y[:10]), "labels: must be a 1-D array of 40"),
    (lambda w, b, x, y: cluster_tightness(x, np.zeros(40, dtype=int)),
     "labels: must hold at least two distinct classes"),
    (lambda w, b, x, y: cluster_tightness(x, y.astype(float)), "labels: must hold integer"),
    (lambda w, b, x, y: cluster_tightness(np.where(np.arange(40)[:, None] == 0, np.nan, x), y),
     "activations: must hold finite numbers"),
    (lambda w, b, x, y: cluster_tightness(np.zeros((40, 5)), y), "activations: class means must differ"),
    (lambda w, b, x, y: cluster_tightness_replicates(x, y, np.arange(39), 5, 0),
     "ids: must be a 1-D array of 40"),
    (lambda w, b, x, y: cluster_tightness_replicates(x, y, np.arange(40.0), 5, 0),
     "ids: must hold integer"),
    (lambda w, b, x, y: cluster_tightness_replicates(x, y, np.arange(40), 0, 0),
     "bootstrap: must be an integer >= 1, got 0"),
    (lambda w, b, x, y: cluster_tightness_replicates(x, y, np.arange(40), 5, -1),
     "seed: must be an integer >= 0, got -1"),
    (lambda w, b, x, y: cluster_tightness_replicates(x, np.ones(40, dtype=int), np.arange(40), 5, 0),
     "labels: must hold at least two distinct classes"),
    (lambda w, b, x, y: wrong_template_distance_cv(x, y, w, b, classes=[0, 1]),
     "classes: must be at least 3 distinct"),
    (lambda w, b, x, y: wrong_template_distance_cv(x, y, w, b, classes=[0, 1, 2]),
     "labels: must all be among classes"),
    (lambda w, b, x, y: wrong_template_distance_cv(x, np.full(40, 7), w, b),
     "labels: must all be among classes, got [7]"),
    (lambda w, b, x, y: wrong_template_distance_cv(x[:, :3], y, w, b), "activations: must have 5 columns"),
])
def test_projection_bad_input_names_the_argument(layer, call, message):
    with pytest.raises(ValueError) as error:
        call(*layer)
    assert str(error.value).startswith(message)


# -- mutual information (Fig. 6) -----------------------------------------------------------------

def brute_force_mutual_information(values):
    """The normalised estimate written out: Gaussian densities with their constants, loops."""
    n, l = values.shape
    means = values.mean(axis=1)
    variance = sum((values[x, j] - means[x]) ** 2 for x in range(n) for j in range(l)) / (n * (l - 1))

    def density(y, mean):
        return math.exp(-(y - mean) ** 2 / (2 * variance)) / math.sqrt(2 * math.pi * variance)

    total = 0.0
    for x in range(n):
        for j in range(l):
            y = values[x, j]
            total += math.log(density(y, means[x])) - math.log(
                sum(density(y, means[other]) for other in range(n)) / n)
    return total / (n * l)


def test_mutual_information_against_brute_force():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(6, 4)) + rng.normal(size=(6, 1))
    assert estimate_mutual_information(torch.tensor(values)) == pytest.approx(
        brute_force_mutual_information(values), rel=1e-12)
    assert estimate_mutual_information(values.astype(np.float32)) == pytest.approx(
        brute_force_mutual_information(values.astype(np.float32).astype(np.float64)), rel=1e-12)


def test_mutual_information_chunks_agree(monkeypatch):
    values = np.random.default_rng(2).normal(size=(9, 5)) + np.arange(9)[:, None] * 0.3
    whole = estimate_mutual_information(values)
    monkeypatch.setattr(analysis.mutual_information, "CELLS_PER_CHUNK", 4 * 9)  # 4 samples
    assert estimate_mutual_information(values) == pytest.approx(whole, rel=1e-12)
    assert whole == pytest.approx(brute_force_mutual_information(values), rel=1e-12)


def test_identical_values_carry_no_information():
    assert estimate_mutual_information(np.full((5, 3), 2.5)) == 0.0  # sigma^2 = 0, equal means
    same_rows = np.tile(np.array([[0.3, -1.0, 2.0, 0.7]]), (8, 1))  # sigma^2 > 0, equal means
    assert estimate_mutual_information(same_rows) == pytest.approx(0.0, abs=1e-12)


def test_separated_examples_carry_log_n():
    n = 10
    rng = np.random.default_rng(3)
    tiny_spread = np.arange(n)[:, None] * 5.0 + 1e-3 * rng.normal(size=(n, 6))
    assert estimate_mutual_information(tiny_spread) == pytest.approx(math.log(n), abs=1e-9)
    no_spread = np.repeat(np.arange(n, dtype=float)[:, None], 4, axis=1)  # sigma^2 = 0 limit
    assert estimate_mutual_information(no_spread) == pytest.approx(math.log(n), abs=1e-12)
    # sigma^2 = 0 with examples sharing means: log N - mean_x log n_x
    shared = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    assert estimate_mutual_information(shared) == pytest.approx(
        math.log(5) - (2 * math.log(2) + 3 * math.log(3)) / 5, abs=1e-12)


def test_two_tight_clusters_carry_log_2():
    rng = np.random.default_rng(4)
    n, l = 40, 20
    cluster = np.where(np.arange(n) < n // 2, -5.0, 5.0)[:, None]
    values = cluster + 0.1 * rng.normal(size=(n, l))  # each example: only noise around its cluster
    estimate = estimate_mutual_information(values)
    assert estimate == pytest.approx(math.log(2), abs=0.05)
    assert estimate_mutual_information(cluster + 0.0 * values) == pytest.approx(math.log(2), abs=1e-12)


def test_mutual_information_lies_between_0_and_log_n_on_random_inputs():
    rng = np.random.default_rng(5)
    for _ in range(30):
        n, l = rng.integers(2, 12), rng.integers(2, 8)
        values = (rng.normal(size=(n, l)) * rng.exponential(size=(n, 1))
                  + rng.normal(size=(n, 1)) * rng.exponential())
        estimate = estimate_mutual_information(values)
        assert -1e-12 <= estimate <= math.log(n) + 1e-12


def test_logit_difference_probe():
    logits = torch.randn(3, 4, 5, dtype=torch.float64)
    assert torch.equal(logit_difference(logits, (3, 1)), logits[:, :, 3] - logits[:, :, 1])
    assert logit_difference(logits.float(), [0, 4]).dtype == torch.float64


@pytest.mark.parametrize("call, message", [
    (lambda: estimate_mutual_information(np.zeros((1, 4))), "N: must be at least 2 examples"),
    (lambda: estimate_mutual_information(np.zeros((4, 1))), "L: must be at least 2 augmentations"),
    (lambda: estimate_mutual_information(np.zeros(4)), "values: must be a 2-D array"),
    (lambda: estimate_mutual_information([[0.0, math.inf], [1.0, 2.0]]), "values: must hold finite"),
    (lambda: logit_difference(np.zeros((2, 3)), (0, 1)), "logits: must be a 3-D array"),
    (lambda: logit_difference(np.zeros((2, 3, 4)), (1, 1)), "classes: must be exactly 2 distinct"),
    (lambda: logit_difference(np.zeros((2, 3, 4)), (1, 4)), "classes: class indices must lie in [0, 4)"),
])
def test_mutual_information_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value).startswith(message)


# -- distillation at equal gamma (Fig. 5) --------------------------------------------------------

def planted_teacher():
    """Logits of a teacher right on every example: margins m_i on the correct class, 0 elsewhere."""
    k = 5
    margins = np.array([2.0, 3.0, 4.5, 6.0, 8.0, 3.5])
    target = np.array([0, 4, 2, 1, 3, 0])
    logits = np.zeros((len(margins), k))
    logits[np.arange(len(margins)), target] = margins
    return torch.tensor(logits), torch.tensor(target), margins, k


def gamma_by_hand(margins, k, temperature):
    """gamma(T) = mean_i (1 - p_y) K/(K-1) with p_y = e^{m/T} / (e^{m/T} + K - 1): K / (e^{m/T} + K - 1)."""
    return float(np.mean(k / (np.exp(margins / temperature) + k - 1)))


def test_bisection_recovers_a_planted_temperature():
    logits, target, margins, k = planted_teacher()
    planted = gamma_by_hand(margins, k, 2.0)
    found = temperature_for_gamma(logits, target, planted)
    assert abs(gamma_by_hand(margins, k, found) - planted) <= 1e-3
    assert found == pytest.approx(2.0, rel=0.02)
    precise = temperature_for_gamma(logits, target, planted, tol=1e-10)
    assert precise == pytest.approx(2.0, rel=1e-8)


@pytest.mark.parametrize("lo, hi", [(8.0, 16.0), (0.05, 0.2), (0.5, 64.0)])
def test_bisection_moves_a_bracket_that_misses(lo, hi):
    _, _, margins, k = planted_teacher()
    planted = gamma_by_hand(margins, k, 2.3)
    calls = []

    def gamma_at(temperature):
        calls.append(temperature)
        return gamma_by_hand(margins, k, temperature)

    match = bisect_temperature(gamma_at, planted, lo=lo, hi=hi, tol=1e-9)
    assert match.temperature == pytest.approx(2.3, rel=1e-6)
    assert match.gamma == pytest.approx(planted, abs=1e-9)
    assert match.evaluations == len(calls) and calls[-1] == match.temperature


def test_streaming_gamma_matches_the_in_memory_search():
    """gamma_at summed over batches with losses.incorrect_mass, as the trainers stream it."""
    logits, target, margins, k = planted_teacher()

    def gamma_at(temperature):
        total, count = 0.0, 0
        for batch in range(0, len(target), 4):
            batch_total, batch_count = incorrect_mass(tempered_probs(logits[batch:batch + 4], temperature),
                                                      target[batch:batch + 4])
            total, count = total + batch_total, count + batch_count
        return total / count

    planted = gamma_by_hand(margins, k, 1.5)
    streamed = bisect_temperature(gamma_at, planted, tol=1e-9)
    assert streamed.temperature == pytest.approx(1.5, rel=1e-6)
    assert streamed.temperature == pytest.approx(
        temperature_for_gamma(logits, target, planted, tol=1e-9), rel=1e-9)


def test_a_teacher_that_errs_cannot_reach_small_gamma():
    logits, target, _, k = planted_teacher()
    wrong = (target + 1) % k
    half_wrong = torch.cat([logits, logits]), torch.cat([target, wrong])
    floor = 0.5 * k / (k - 1)  # its arg-max is wrong on half the examples: gamma(T -> 0) = 0.625
    with pytest.raises(ValueError) as error:
        temperature_for_gamma(*half_wrong, 0.3)
    assert str(error.value).startswith("gamma: must be reachable by this teacher")
    assert str(error.value).endswith("got 0.3")
    found = temperature_for_gamma(*half_wrong, floor + 0.1)
    z = half_wrong[0].numpy() / found
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p_true = p[np.arange(len(z)), half_wrong[1].numpy()]
    assert abs(np.mean(1 - p_true) * k / (k - 1) - (floor + 0.1)) <= 1e-3


@pytest.mark.parametrize("call, message", [
    (lambda: bisect_temperature(lambda t: 0.5, 0.0), "gamma: must be in (0, 1), got 0.0"),
    (lambda: bisect_temperature(lambda t: 0.5, 1.0), "gamma: must be in (0, 1), got 1.0"),
    (lambda: bisect_temperature(lambda t: 0.5, math.nan), "gamma: must be in (0, 1)"),
    (lambda: bisect_temperature(lambda t: 1 / (1 + t), 0.5), "gamma_at: must increase with the temperature"),
    (lambda: bisect_temperature(lambda t: 0.2 if t < 2 else 0.8, 0.5), "tol: must be met within 60"),
    (lambda: bisect_temperature(lambda t: 0.5, 0.5, lo=2.0, hi=1.0), "lo: must be below hi=1"),
    (lambda: bisect_temperature(lambda t: 0.5, 0.5, lo=-1.0), "lo: must be a finite number > 0"),
    (lambda: bisect_temperature(lambda t: 0.5, 0.5, tol=0.0), "tol: must be a finite number > 0"),
    (lambda: bisect_temperature(lambda t: t / (1 + t), 0.999, hi=2.0, max_expansions=2),
     "gamma: must be reachable by this teacher"),
])
def test_bisection_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value).startswith(message)


# -- figures (Fig. 1, 5, 6) ----------------------------------------------------------------------

def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_projection_figure_renders(layer, tmp_path):
    from ls_plugins import plots

    weight, bias, activations, labels = layer
    classes = [1, 3, 4]
    origin, basis = template_plane(weight, bias, classes)
    keep = np.isin(labels, classes)
    x, y = activations[keep], labels[keep]
    panel = dict(points=project(x, origin, basis).numpy(), labels=y,
                 tightness=cluster_tightness(x, y),
                 templates=((torch.tensor(numpy_templates(weight, bias)[classes]) - origin)
                            @ basis.T).numpy())
    names = {1: "airplane", 3: "automobile", 4: "bird"}
    path = tmp_path / "projection.png"
    plots.projection_figure({"without LS": {"training": panel, "validation": panel},
                             "with LS": {"training": panel}}, str(path), names, title="toy")
    assert_png(path)
    one = tmp_path / "one.png"
    plots.projection_figure({"run": {"training": {"points": panel["points"], "labels": y}}},
                            str(one), ["a", "airplane", "b", "automobile", "bird"])
    assert_png(one)


def test_mutual_information_figure_renders(tmp_path):
    from ls_plugins import plots

    path = tmp_path / "mi.png"
    plots.mutual_information_figure({"α=0": [(0, 0.1), (1, 3.0), (2, 2.5)],
                                     "α=0.1": [(2, 1.0), (0, 0.1), (1, 2.2)]}, str(path), 600)
    assert_png(path)


def test_equal_gamma_figure_renders(tmp_path):
    from ls_plugins import plots

    path = tmp_path / "gamma.png"
    gammas = [0.0, 0.1, 0.3, 0.6]
    plots.equal_gamma_figure({
        "teacher": [(g, 0.93 + 0.01 * g) for g in gammas],
        "student_ls": [(g, 0.86 - 0.01 * g, 0.003) for g in gammas],
        "student_hard_teacher": [(g, 0.875, 0.002) for g in gammas[1:]],
        "student_ls_teacher": [(g, 0.86 - 0.02 * g) for g in gammas[1:]],
        "another run": [(0.2, 0.85)],
    }, str(path), metric_name="BLEU")
    assert_png(path)
