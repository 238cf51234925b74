"""CalibrationStats and friends against references computed another way."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import numpy_calibration

from ls_plugins.calibration import (CalibrationStats, TemperatureFit, bin_sums,
                                    expected_calibration_error, fit_temperature,
                                    hypothesis_correctness, update_at_temperatures)


def random_predictions(seed, n=5000, k=10, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, k, (n,), generator=g)
    return logits, target


# k = 10 takes update's few-classes path, k = 300 its softmax path
@pytest.mark.parametrize("seed,n_bins,k", [(0, 15, 10), (1, 10, 10), (2, 1, 10), (3, 37, 10),
                                           (4, 15, 300), (5, 37, 300)])
def test_stats_match_numpy_reference(seed, n_bins, k):
    logits, target = random_predictions(seed, k=k, scale=3.0 if k == 10 else 6.0)
    probs = torch.softmax(logits, -1)
    stats = CalibrationStats(n_bins)
    stats.update(logits, target)
    ece, mce, table = numpy_calibration(probs.numpy(), target.numpy(), n_bins)
    assert stats.ece() == pytest.approx(ece, abs=1e-6)
    assert stats.mce() == pytest.approx(mce, abs=1e-6)
    assert [b["count"] for b in stats.bins()] == table
    assert stats.count() == len(target)
    p = probs.numpy()
    assert stats.accuracy() == pytest.approx((p.argmax(1) == target.numpy()).mean(), abs=1e-12)
    assert stats.confidence() == pytest.approx(p.max(1).mean(), abs=1e-6)
    assert stats.nll() == pytest.approx(F.cross_entropy(logits, target).item(), abs=1e-5)
    one_hot = np.eye(p.shape[1])[target.numpy()]
    assert stats.brier() == pytest.approx(((p - one_hot) ** 2).sum(1).mean(), abs=1e-5)
    assert expected_calibration_error(probs, target, n_bins) == pytest.approx(ece, abs=1e-6)


def test_matches_torchmetrics_l1_calibration_error():
    from torchmetrics.functional.classification import multiclass_calibration_error
    logits, target = random_predictions(7, n=4000, k=6)
    probs = torch.softmax(logits.float(), -1)
    reference = multiclass_calibration_error(probs, target, num_classes=6, n_bins=15, norm="l1")
    stats = CalibrationStats(15)
    stats.update(logits.float(), target)
    assert stats.ece() == pytest.approx(reference.item(), abs=1e-6)


def test_confidences_on_bin_edges_and_at_zero_and_one():
    edges = torch.linspace(0, 1, 6, dtype=torch.float64)  # 5 bins: 0, .2, .4, .6, .8, 1
    confidence = torch.cat([edges, edges[1:4]])
    correct = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    counts, conf_sums, correct_sums = bin_sums(confidence, correct, 5)
    # 0 and .2 -> bin 0; .4 -> bin 1; .6 -> bin 2; .8 -> bin 3; 1 -> bin 4
    assert counts.tolist() == [2 + 1, 2, 2, 1, 1]
    assert conf_sums.tolist() == pytest.approx([0.0 + 0.2 + 0.2, 0.8, 1.2, 0.8, 1.0])
    assert correct_sums.tolist() == [1 + 1, 1 + 0, 1 + 0, 0, 1]
    probs = torch.stack([confidence, 1 - confidence], 1)
    target = torch.where(correct, probs.argmax(1), 1 - probs.argmax(1))
    stats = CalibrationStats(5)
    stats.update_probs(probs, target)
    ref_ece, ref_mce, ref_table = numpy_calibration(probs.numpy(), target.numpy(), 5)
    assert stats.ece() == pytest.approx(ref_ece, abs=1e-12)
    assert [b["count"] for b in stats.bins()] == ref_table


def test_merge_of_shards_equals_whole_and_ignore_index():
    logits, target = random_predictions(11, n=3001)
    target[::5] = -1
    whole = CalibrationStats(15)
    whole.update(logits, target, ignore_index=-1)
    parts = [CalibrationStats(15) for _ in range(3)]
    for part, rows in zip(parts, torch.tensor_split(torch.arange(3001), 3)):
        part.update(logits[rows], target[rows], ignore_index=-1)
    merged = parts[0] + parts[1] + parts[2]
    assert merged.count() == whole.count() == int(target.ne(-1).sum())
    assert torch.equal(merged.counts, whole.counts)
    for name in ("ece", "mce", "nll", "brier", "accuracy", "confidence"):
        assert getattr(merged, name)() == pytest.approx(getattr(whole, name)(), abs=1e-12)
    with pytest.raises(ValueError):
        whole.merge(CalibrationStats(10))


def test_merge_keeps_adaptive_values_and_refuses_mixed_kinds():
    logits, target = random_predictions(6, n=400)
    whole, first, second = (CalibrationStats(10, adaptive=True) for _ in range(3))
    whole.update(logits, target)
    first.update(logits[:150], target[:150])
    second.update(logits[150:], target[150:])
    assert (first + second).adaptive_ece() == pytest.approx(whole.adaptive_ece(), abs=1e-12)
    plain = CalibrationStats(10)
    plain.update(logits[150:], target[150:])
    for left, right in ((first, plain), (plain, first)):
        with pytest.raises(ValueError, match="adaptive=True and adaptive=False|adaptive=False and adaptive=True"):
            left.merge(right)


def test_temperature_applies_as_logits_over_t():
    logits, target = random_predictions(4)
    scaled, plain = CalibrationStats(), CalibrationStats()
    scaled.update(logits, target, temperature=2.5)
    plain.update(logits / 2.5, target)
    assert torch.equal(scaled.counts, plain.counts)
    for mine, reference in ((scaled.conf_sums, plain.conf_sums),
                            (scaled.correct_sums, plain.correct_sums),
                            (scaled.nll_sum, plain.nll_sum), (scaled.brier_sum, plain.brier_sum)):
        assert torch.allclose(torch.as_tensor(mine), torch.as_tensor(reference), rtol=1e-12)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            scaled.update(logits, target, temperature=bad)


def test_adaptive_ece_matches_equal_mass_bins_by_hand():
    logits, target = random_predictions(5, n=1000)
    stats = CalibrationStats(10, adaptive=True)
    stats.update(logits[:600], target[:600])
    stats.update(logits[600:], target[600:])
    p = torch.softmax(logits, -1).numpy()
    confidence, correct = p.max(1), (p.argmax(1) == target.numpy())
    order = np.argsort(confidence, kind="stable")
    reference = sum(abs(correct[chunk].sum() - confidence[chunk].sum())
                    for chunk in np.array_split(order, 10)) / len(order)
    assert stats.adaptive_ece() == pytest.approx(reference, abs=1e-9)
    assert stats.to_dict()["adaptive_ece"] == pytest.approx(reference, abs=1e-9)


@pytest.mark.parametrize("planted", [0.5, 1.9, 3.0])
def test_fit_temperature_recovers_planted_temperature(planted):
    """A calibrated model's logits z (labels drawn from softmax(z)), made over- or under-confident
    as z * T0: the NLL-optimal temperature is T0."""
    g = torch.Generator().manual_seed(int(planted * 10))
    calibrated = torch.randn(20000, 10, generator=g) * 2.0
    target = torch.multinomial(torch.softmax(calibrated, -1), 1, generator=g).squeeze(1)
    fitted = fit_temperature(calibrated * planted, target)
    assert fitted == pytest.approx(planted, rel=0.02)
    # and the fitted temperature does minimise NLL
    nll = lambda t: F.cross_entropy(calibrated * planted / t, target).item()
    assert nll(fitted) <= min(nll(fitted * 1.05), nll(fitted / 1.05))


def test_bad_bins_and_empty_stats():
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="bins"):
            CalibrationStats(bad)
    empty = CalibrationStats()
    assert math.isnan(empty.ece()) and empty.count() == 0
    assert empty.to_dict()["ece"] is None


@pytest.mark.parametrize("k", [10, 300])
def test_update_at_temperatures_equals_one_update_per_temperature(k):
    logits, target = random_predictions(8, n=3000, k=k)
    target[::7] = 3  # ignored below
    temperatures = (0.5, 1.0, 1.7, 3.0)
    together = {t: CalibrationStats(15) for t in temperatures}
    update_at_temperatures(together, logits, target, ignore_index=3)
    for t in temperatures:
        alone = CalibrationStats(15)
        alone.update(logits, target, temperature=t, ignore_index=3)
        kept, probs = target[target != 3], torch.softmax(logits[target != 3] / t, -1)
        reference = numpy_calibration(probs.numpy(), kept.numpy(), 15)[0]
        assert together[t].count() == alone.count() == int((target != 3).sum())
        assert together[t].ece() == pytest.approx(alone.ece(), abs=1e-12)
        assert together[t].ece() == pytest.approx(reference, abs=1e-6)
        assert together[t].nll() == pytest.approx(
            F.cross_entropy(logits[target != 3] / t, target[target != 3]).item(), abs=1e-9)


def kumar_debiased_ce2(confidence, correct, n_bins):
    """Kumar et al.'s ``unbiased_square_ce`` on our bins, with Python lists as in their code."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    binned = [[] for _ in range(n_bins)]
    for c, a in zip(confidence, correct):
        i = 0 if c == 0 else int(np.searchsorted(edges, c, side="left")) - 1
        binned[i].append((c, a))
    total = 0.0
    for data in binned:
        if len(data) >= 2:
            mean_c, mean_a = np.mean([c for c, _ in data]), np.mean([a for _, a in data])
            error = (mean_c - mean_a) ** 2 - mean_a * (1 - mean_a) / (len(data) - 1)
            total += len(data) / len(confidence) * error
    return total


@pytest.mark.parametrize("seed,n_bins,k", [(0, 15, 10), (1, 40, 300), (2, 7, 3)])
def test_debiased_ce2_matches_kumar_et_al_by_hand(seed, n_bins, k):
    logits, target = random_predictions(seed, n=800, k=k)
    stats = CalibrationStats(n_bins)
    stats.update(logits, target)
    p = torch.softmax(logits, -1).numpy()
    reference = kumar_debiased_ce2(p.max(1), (p.argmax(1) == target.numpy()).astype(float), n_bins)
    assert stats.debiased_ce2() == pytest.approx(reference, abs=1e-12)
    assert stats.to_dict()["debiased_ce2"] == pytest.approx(reference, abs=1e-12)


def test_debiased_ce2_removes_the_plugin_estimators_bias_on_calibrated_predictions():
    """Correct ~ Bernoulli(confidence): the squared calibration error is 0.  The plug-in
    estimate sum_b (n_b/N) gap_b^2 is positive on average; the debiased one averages 0."""
    g = torch.Generator().manual_seed(3)
    plugin, debiased = [], []
    for _ in range(200):
        confidence = torch.rand(400, generator=g, dtype=torch.float64) * 0.5 + 0.5
        correct = torch.rand(400, generator=g, dtype=torch.float64) < confidence
        stats = CalibrationStats(15)
        stats.update_probs(torch.stack([confidence, 1 - confidence], 1), (~correct).long())
        gaps = (stats.correct_sums - stats.conf_sums).square() / stats.counts.clamp_min(1)
        plugin.append(float(gaps.sum() / stats.count()))
        debiased.append(stats.debiased_ce2())
    standard_error = np.std(debiased) / np.sqrt(len(debiased))
    assert abs(np.mean(debiased)) < 3 * standard_error
    assert np.mean(plugin) > 10 * standard_error


def numpy_marginal_ece(probs, target, n_bins):
    """Per class: bin p_k (right-closed bins, 0 in the first), sum_b |#(y == k) - sum p_k| / N;
    then the mean over classes."""
    n, k = probs.shape
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    per_class = []
    for c in range(k):
        p, y = probs[:, c], (target == c).astype(float)
        error = 0.0
        for i in range(n_bins):
            inside = (p > edges[i]) & (p <= edges[i + 1])
            if i == 0:
                inside |= p == 0.0
            error += abs(y[inside].sum() - p[inside].sum())
        per_class.append(error / n)
    return float(np.mean(per_class))


@pytest.mark.parametrize("k", [7, 100])
def test_marginal_ece_matches_numpy_per_class_bins(k):
    logits, target = random_predictions(20 + k, n=1200, k=k)
    stats = CalibrationStats(12, marginal=True)
    halves = [CalibrationStats(12, marginal=True) for _ in range(2)]
    stats.update(logits, target, temperature=1.5)
    for half, rows in zip(halves, torch.tensor_split(torch.arange(1200), [500])):
        half.update(logits[rows], target[rows], temperature=1.5)
    probs = torch.softmax(logits / 1.5, -1)
    reference = numpy_marginal_ece(probs.numpy(), target.numpy(), 12)
    assert stats.marginal_ece() == pytest.approx(reference, abs=1e-9)
    assert (halves[0] + halves[1]).marginal_ece() == pytest.approx(reference, abs=1e-9)
    with_empty = stats + CalibrationStats(12, marginal=True)  # a copy, not a view of stats' sums
    with_empty.update(logits[:100], target[:100])
    assert stats.marginal_ece() == pytest.approx(reference, abs=1e-9)
    with pytest.raises(ValueError, match=r"^marginal: merged statistics must share it \(True\)"):
        stats.merge(CalibrationStats(12))
    assert stats.to_dict()["marginal_ece"] == pytest.approx(reference, abs=1e-9)
    from_probs = CalibrationStats(12, marginal=True)
    from_probs.update_probs(probs, target)
    assert from_probs.marginal_ece() == pytest.approx(reference, abs=1e-9)
    assert "marginal_ece" not in CalibrationStats(12).to_dict()
    with pytest.raises(ValueError, match=r"^marginal: marginal_ece needs"):
        CalibrationStats(12).marginal_ece()
    with pytest.raises(ValueError, match=r"^logits: must have as many classes as before"):
        stats.update(logits[:, :5], target.clamp(max=4))


def alignments(hyp, ref):
    """Every alignment of two token lists as (edits, matches, correctness of hyp tokens)."""
    if not hyp:
        return [(len(ref), 0, ())]
    if not ref:
        return [(len(hyp), 0, (False,) * len(hyp))]
    out = []
    for edits, matches, flags in alignments(hyp[1:], ref[1:]):  # hyp[0] aligned with ref[0]
        same = hyp[0] == ref[0]
        out.append((edits + (not same), matches + same, (same,) + flags))
    for edits, matches, flags in alignments(hyp[1:], ref):       # hyp[0] unmatched
        out.append((edits + 1, matches, (False,) + flags))
    for edits, matches, flags in alignments(hyp, ref[1:]):       # ref[0] skipped
        out.append((edits + 1, matches, flags))
    return out


def test_hypothesis_correctness_on_hand_made_cases():
    cases = [
        ([4, 5, 6], [4, 5, 6], [True, True, True]),           # equal: all correct
        ([4, 9, 6], [4, 5, 6], [True, False, True]),          # substitution
        ([4, 5, 9, 6], [4, 5, 6], [True, True, False, True]),  # insertion in the hypothesis
        ([4, 6], [4, 5, 6], [True, True]),                    # deletion from the hypothesis
        ([5, 4, 6], [4, 5, 6], [True, False, True]),          # a swap: only one can match
        ([], [4, 5], []),                                     # empty hypothesis
        ([4, 5], [], [False, False]),                         # empty reference
        ([7, 7, 2], [2, 7, 7], [True, True, False]),          # 2 edits either way, 2 matches
        ([1, 2, 3, 2], [2], [False, False, False, True]),     # one match: the backtrace from
                                                              # the end takes the first it meets
    ]
    for hyp, ref, expected in cases:
        result = hypothesis_correctness(torch.tensor(hyp, dtype=torch.long), ref)
        assert result.dtype == torch.bool and result.tolist() == expected, (hyp, ref)


def test_hypothesis_correctness_is_a_min_edit_max_match_alignment():
    rng = np.random.default_rng(0)
    for _ in range(300):
        hyp = rng.integers(0, 3, rng.integers(0, 5)).tolist()
        ref = rng.integers(0, 3, rng.integers(0, 5)).tolist()
        every = alignments(hyp, ref)
        fewest = min(edits for edits, _, _ in every)
        most = max(matches for edits, matches, _ in every if edits == fewest)
        optimal = {flags for edits, matches, flags in every if (edits, matches) == (fewest, most)}
        assert tuple(hypothesis_correctness(hyp, ref).tolist()) in optimal, (hyp, ref)


def test_hypothesis_correctness_rejects_bad_input():
    with pytest.raises(ValueError, match=r"^hypothesis: must be a 1-D sequence of token ids"):
        hypothesis_correctness(torch.zeros(2, 3, dtype=torch.long), [1])
    with pytest.raises(ValueError, match=r"^reference: must hold integer token ids"):
        hypothesis_correctness([1, 2], torch.tensor([1.0, 2.0]))


def planted_logits(seed, planted, n=6000, k=10):
    g = torch.Generator().manual_seed(seed)
    calibrated = torch.randn(n, k, generator=g) * 2.0
    target = torch.multinomial(torch.softmax(calibrated, -1), 1, generator=g).squeeze(1)
    return calibrated * planted, target


@pytest.mark.parametrize("planted,k", [(0.5, 10), (1.9, 10), (3.0, 300), (1.2, 1000)])
def test_streamed_temperature_fit_matches_the_exact_fit(planted, k):
    logits, target = planted_logits(int(planted * 10) + k, planted, n=2000 if k > 10 else 6000, k=k)
    exact = fit_temperature(logits, target)
    one_shot, streamed, halves = TemperatureFit(), TemperatureFit(), [TemperatureFit(), TemperatureFit()]
    one_shot.update(logits, target)
    for rows in torch.tensor_split(torch.arange(len(target)), 10):
        streamed.update(logits[rows], target[rows])
    for half, rows in zip(halves, torch.tensor_split(torch.arange(len(target)), 2)):
        half.update(logits[rows], target[rows])
    assert one_shot.fit() == pytest.approx(exact, rel=0.01)
    assert streamed.fit() == pytest.approx(one_shot.fit(), rel=1e-9)
    assert (halves[0] + halves[1]).fit() == pytest.approx(one_shot.fit(), rel=1e-9)
    assert one_shot.count == len(target)


def test_temperature_fit_state_does_not_grow_with_the_data():
    logits, target = planted_logits(1, 1.5, n=200)
    fitter = TemperatureFit()

    def state_numel():
        return sum(v.numel() for v in vars(fitter).values() if isinstance(v, torch.Tensor))
    fitter.update(logits, target)
    after_one = state_numel()
    for _ in range(99):
        fitter.update(logits, target)
    assert state_numel() == after_one == 4 * len(fitter.betas)
    assert fitter.count == 100 * 200


def test_temperature_fit_ignore_index_masked_classes_float64_and_grid_ends():
    logits, target = planted_logits(2, 2.2, n=2000)
    kept = TemperatureFit()
    kept.update(logits[target != 3], target[target != 3])
    ignoring = TemperatureFit()
    ignoring.update(logits.view(40, 50, 10), target.view(40, 50), ignore_index=3)
    assert ignoring.fit() == pytest.approx(kept.fit(), rel=1e-9)
    assert ignoring.fit() == pytest.approx(fit_temperature(logits, target, ignore_index=3), rel=0.01)
    # a class masked with -inf (as fairseq masks symbols) carries no probability at any T
    masked = TemperatureFit()
    masked.update(torch.cat([logits, torch.full((2000, 1), -math.inf)], 1), target)
    plain = TemperatureFit()
    plain.update(logits, target)
    assert masked.fit() == pytest.approx(plain.fit(), rel=1e-6)
    as_double = TemperatureFit()
    as_double.update(logits.double(), target)
    assert as_double.fit() == pytest.approx(plain.fit(), rel=1e-4)
    hot, cold = TemperatureFit(t_min=0.5, t_max=4.0), TemperatureFit(t_min=0.5, t_max=4.0)
    hot.update(*planted_logits(3, 10.0))   # T* = 10 > 4
    cold.update(*planted_logits(4, 0.05))  # T* = 0.05 < 0.5
    assert hot.fit() == 4.0 and cold.fit() == 0.5


def test_temperature_fit_bad_input():
    with pytest.raises(ValueError, match=r"^t_min: must be a finite number > 0, got 0"):
        TemperatureFit(t_min=0.0)
    with pytest.raises(ValueError, match=r"^t_max: must be larger than t_min \(2.0\), got 1.0"):
        TemperatureFit(t_min=2.0, t_max=1.0)
    with pytest.raises(ValueError, match="at least one prediction"):
        TemperatureFit().fit()
    with pytest.raises(ValueError, match=r"^other: must use the same temperature grid"):
        TemperatureFit().merge(TemperatureFit(t_max=10.0))


def test_docstring_examples_of_the_split_calibration_modules():
    import doctest

    import ls_plugins.alignment
    result = doctest.testmod(ls_plugins.alignment)
    assert result.attempted > 0 and result.failed == 0
