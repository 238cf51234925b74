"""Bootstrap intervals of CalibrationStats: Poisson weights, replicate tables, coverage, pairing."""
import math

import numpy as np
import pytest
import torch

from ls_plugins.bootstrap import poisson_weights
from ls_plugins.calibration import (METRICS, CalibrationStats, paired_interval,
                                    paired_replicate_interval, update_at_temperatures)


def grouped_predictions(seed, n=600, k=5, group_size=7, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, k, (n,), generator=g)
    groups = torch.arange(n) // group_size * 3 + 1000  # arbitrary, non-contiguous ids
    return logits, target, groups


def test_poisson_weights_follow_poisson_one_and_depend_only_on_seed_and_group():
    ids = torch.arange(-10_000, 10_000)
    weights = poisson_weights(5, ids, 50)
    assert weights.shape == (50, 20_000)
    assert weights.mean().item() == pytest.approx(1.0, abs=0.01)
    assert weights.var().item() == pytest.approx(1.0, abs=0.02)
    for k in range(6):
        pmf = math.exp(-1.0) / math.factorial(k)
        assert (weights == k).double().mean().item() == pytest.approx(pmf, abs=0.003)
    # replicates and neighbouring groups are uncorrelated
    assert abs(np.corrcoef(weights[0].numpy(), weights[1].numpy())[0, 1]) < 0.03
    assert abs(np.corrcoef(weights[:, :-1].reshape(-1).numpy(),
                           weights[:, 1:].reshape(-1).numpy())[0, 1]) < 0.03
    # a group's weights do not depend on which other groups are drawn with it, or in what order
    some = torch.tensor([17, -3, 9_999])
    assert torch.equal(poisson_weights(5, some, 50), weights[:, some + 10_000])
    assert torch.equal(poisson_weights(5, some.flip(0), 50), weights[:, some + 10_000].flip(1))
    assert not torch.equal(poisson_weights(6, some, 50), poisson_weights(5, some, 50))
    assert not torch.equal(poisson_weights(5, some, 50, stream=1), poisson_weights(5, some, 50))


def numpy_replicate_metrics(probs, target, groups, weights_of_group, n_bins):
    """Each replicate's metrics by hand: every prediction counted w[group] times."""
    confidence, correct = probs.max(1), (probs.argmax(1) == target).astype(float)
    nll = -np.log(probs[np.arange(len(target)), target])
    brier = ((probs - np.eye(probs.shape[1])[target]) ** 2).sum(1)
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = {m: [] for m in METRICS}
    for w_of_group in weights_of_group:
        w = np.array([w_of_group[g] for g in groups])
        n = w.sum()
        count = np.bincount(index, weights=w, minlength=n_bins)
        conf = np.bincount(index, weights=w * confidence, minlength=n_bins)
        acc = np.bincount(index, weights=w * correct, minlength=n_bins)
        gaps = [abs(a - c) / m for a, c, m in zip(acc, conf, count) if m > 0]
        out["ece"].append(np.abs(acc - conf).sum() / n)
        out["mce"].append(max(gaps))
        debiased = 0.0
        for a, c, m in zip(acc, conf, count):
            if m >= 2:
                debiased += m / n * ((c / m - a / m) ** 2 - (a / m) * (1 - a / m) / (m - 1))
        out["debiased_ce2"].append(debiased)
        out["nll"].append((w * nll).sum() / n)
        out["brier"].append((w * brier).sum() / n)
        out["accuracy"].append(acc.sum() / n)
        out["confidence"].append(conf.sum() / n)
    return {m: np.array(v) for m, v in out.items()}


def test_replicates_and_intervals_match_weighted_numpy_reference():
    logits, target, groups = grouped_predictions(1, n=300, k=4)
    stats = CalibrationStats(6, bootstrap=40, seed=3)
    for rows in torch.tensor_split(torch.arange(300), 4):
        stats.update(logits[rows], target[rows], groups=groups[rows])
    unique = groups.unique()
    weights = poisson_weights(3, unique, 40)
    weights_of_group = [dict(zip(unique.tolist(), row.tolist())) for row in weights]
    probs = torch.softmax(logits, -1).numpy()
    reference = numpy_replicate_metrics(probs, target.numpy(), groups.tolist(), weights_of_group, 6)
    for metric in METRICS:
        mine = stats.replicate_values(metric).numpy()
        np.testing.assert_allclose(mine, reference[metric], rtol=1e-9, atol=1e-12, err_msg=metric)
        low, high = stats.interval(metric, 0.9)
        assert (low, high) == pytest.approx(tuple(np.percentile(reference[metric], [5, 95])),
                                            rel=1e-9, abs=1e-12)
    assert stats.ece_interval(0.8) == stats.interval("ece", 0.8)


def test_same_groups_give_identical_replicates_in_any_batching_and_order():
    logits, target, groups = grouped_predictions(2)
    one_shot = CalibrationStats(10, bootstrap=30, seed=9)
    one_shot.update(logits, target, groups=groups)
    order = torch.randperm(len(target), generator=torch.Generator().manual_seed(0))
    streamed = CalibrationStats(10, bootstrap=30, seed=9)
    for rows in torch.tensor_split(order, [5, 50, 51, 300]):
        streamed.update(logits[rows], target[rows], groups=groups[rows])
    n = 10
    assert torch.equal(streamed.replicate_sums[:, :n], one_shot.replicate_sums[:, :n])  # counts
    assert torch.equal(streamed.replicate_sums[:, 2 * n:3 * n], one_shot.replicate_sums[:, 2 * n:3 * n])
    torch.testing.assert_close(streamed.replicate_sums, one_shot.replicate_sums, rtol=1e-12, atol=1e-12)
    other_seed = CalibrationStats(10, bootstrap=30, seed=10)
    other_seed.update(logits, target, groups=groups)
    assert not torch.equal(other_seed.replicate_sums[:, :n], one_shot.replicate_sums[:, :n])


def test_shards_merged_equal_the_whole_replicates_included():
    logits, target, groups = grouped_predictions(3, n=900)
    target[::11] = -100
    whole = CalibrationStats(12, bootstrap=25, seed=1)
    whole.update(logits, target, ignore_index=-100, groups=groups)
    shards = [CalibrationStats(12, bootstrap=25, seed=1) for _ in range(3)]
    for shard, rows in zip(shards, torch.tensor_split(torch.arange(900), [200, 610])):
        shard.update(logits[rows], target[rows], ignore_index=-100, groups=groups[rows])
    merged = shards[0] + shards[1] + shards[2]
    assert torch.equal(merged.counts, whole.counts)
    assert torch.equal(merged.replicate_sums[:, :12], whole.replicate_sums[:, :12])
    torch.testing.assert_close(merged.replicate_sums, whole.replicate_sums, rtol=1e-12, atol=1e-12)
    for metric in METRICS:
        assert merged.interval(metric) == pytest.approx(whole.interval(metric), abs=1e-12)


def test_positional_groups_are_running_positions_and_refuse_merging_two_shards():
    logits, target, _ = grouped_predictions(4, n=400)
    one_shot = CalibrationStats(10, bootstrap=20, seed=2)
    one_shot.update(logits, target)
    streamed = CalibrationStats(10, bootstrap=20, seed=2)
    for rows in torch.tensor_split(torch.arange(400), 3):
        streamed.update(logits[rows], target[rows])
    assert streamed.positions == one_shot.positions == 400
    assert torch.equal(streamed.replicate_sums[:, :10], one_shot.replicate_sums[:, :10])
    # positions are ids 0, 1, 2, ... in a stream separate from explicit ids 0, 1, 2, ...
    explicit = CalibrationStats(10, bootstrap=20, seed=2)
    explicit.update(logits, target, groups=torch.arange(400))
    assert not torch.equal(explicit.replicate_sums[:, :10], one_shot.replicate_sums[:, :10])
    first, second = CalibrationStats(10, bootstrap=20), CalibrationStats(10, bootstrap=20)
    first.update(logits[:200], target[:200])
    second.update(logits[200:], target[200:])
    with pytest.raises(ValueError, match="^groups: merging bootstrap statistics needs explicit"):
        first.merge(second)
    grouped = CalibrationStats(10, bootstrap=20)
    grouped.update(logits[200:], target[200:], groups=torch.arange(200))
    assert (first + grouped).count() == 400  # one positional side is fine


def population_ece(n_bins, low=0.5, high=1.0):
    """ECE over equal-width bins of confidence c ~ U(low, high) with P(correct | c) = c^2:
    per bin, the mean of c^2 minus the mean of c over the bin's part of [low, high]."""
    total = 0.0
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for a, b in zip(edges[:-1], edges[1:]):
        a, b = max(a, low), min(b, high)
        if b > a:
            mean_c, mean_c2 = (a + b) / 2, (b ** 3 - a ** 3) / (3 * (b - a))
            total += (b - a) / (high - low) * abs(mean_c2 - mean_c)
    return total


def test_ece_interval_covers_the_population_ece():
    truth = population_ece(15)
    g = torch.Generator().manual_seed(0)
    repetitions, n = 200, 1500
    confidence = torch.rand(repetitions, n, generator=g, dtype=torch.float64) * 0.5 + 0.5
    correct = torch.rand(repetitions, n, generator=g, dtype=torch.float64) < confidence ** 2
    groups = torch.arange(n) // 5
    covered, widths, estimates = 0, [], []
    for r in range(repetitions):
        stats = CalibrationStats(15, bootstrap=200, seed=r)
        probs = torch.stack([confidence[r], 1 - confidence[r]], 1)
        stats.update_probs(probs, (~correct[r]).long(), groups=groups)  # class 0 is predicted
        low, high = stats.ece_interval(0.95)
        covered += low <= truth <= high
        widths.append(high - low)
        estimates.append(stats.ece())
    assert covered / repetitions >= 0.90
    # and not by being too wide: the width is about that of +-1.96 standard deviations
    assert np.mean(widths) == pytest.approx(2 * 1.96 * np.std(estimates), rel=0.25)


def test_paired_interval_of_correlated_models_is_narrower_than_either():
    g = torch.Generator().manual_seed(1)
    n = 3000
    confidence = torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.5
    correct = torch.rand(n, generator=g, dtype=torch.float64) < confidence ** 2
    other_confidence = (confidence - 0.03 + 0.01 * torch.randn(n, generator=g)).clamp(0.5, 1.0)
    groups = torch.arange(n) // 10
    a, b = CalibrationStats(15, bootstrap=300, seed=4), CalibrationStats(15, bootstrap=300, seed=4)
    a.update_probs(torch.stack([confidence, 1 - confidence], 1), (~correct).long(), groups=groups)
    b.update_probs(torch.stack([other_confidence, 1 - other_confidence], 1), (~correct).long(),
                   groups=groups)
    low, high = paired_interval(a, b)
    width = high - low
    assert low <= a.ece() - b.ece() <= high
    for stats in (a, b):
        own_low, own_high = stats.ece_interval()
        assert width < 0.5 * (own_high - own_low)
    # the same two models with independent weights: the difference is far less certain
    unpaired = CalibrationStats(15, bootstrap=300, seed=5)
    unpaired.update_probs(torch.stack([other_confidence, 1 - other_confidence], 1),
                          (~correct).long(), groups=groups)
    difference = a.replicate_values("ece") - unpaired.replicate_values("ece")
    assert np.subtract(*np.percentile(difference.numpy(), [97.5, 2.5])) > 2 * width
    low_nll, high_nll = paired_interval(a, b, metric="nll", level=0.9)
    assert low_nll <= a.nll() - b.nll() <= high_nll


def test_update_at_temperatures_and_update_probs_share_the_replicates():
    logits, target, groups = grouped_predictions(5, n=500, k=80)  # k > 64: the softmax path
    together = {t: CalibrationStats(10, bootstrap=15, seed=7) for t in (0.7, 1.0, 2.0)}
    update_at_temperatures(together, logits, target, groups=groups)
    for t, stats in together.items():
        alone, from_probs = (CalibrationStats(10, bootstrap=15, seed=7) for _ in range(2))
        alone.update(logits, target, temperature=t, groups=groups)
        from_probs.update_probs(torch.softmax(logits / t, -1), target, groups=groups)
        torch.testing.assert_close(stats.replicate_sums, alone.replicate_sums, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(from_probs.replicate_sums, alone.replicate_sums, rtol=1e-9, atol=1e-9)


def test_to_dict_and_summary_report_the_intervals():
    logits, target, groups = grouped_predictions(6)
    stats = CalibrationStats(10, bootstrap=50, seed=0)
    stats.update(logits, target, groups=groups)
    result = stats.to_dict(level=0.9)
    assert result["bootstrap"] == 50 and result["seed"] == 0 and result["interval_level"] == 0.9
    assert set(result["intervals"]) == set(METRICS)
    for metric in METRICS:
        assert result["intervals"][metric] == pytest.approx(list(stats.interval(metric, 0.9)))
    low, high = stats.ece_interval()
    assert f"ECE {stats.ece():.4f} [{low:.4f}, {high:.4f}] |" in stats.summary()
    assert "intervals" not in CalibrationStats(10).to_dict()


def test_paired_interval_from_json_results_equals_the_one_from_the_statistics():
    """Two runs written to JSON and read back later (the demo's report) pair replicate by
    replicate; an empty replicate (None in JSON) is left out, not taken as 0."""
    import json
    logits, target, groups = grouped_predictions(8, n=300)
    a, b = CalibrationStats(10, bootstrap=40, seed=2), CalibrationStats(10, bootstrap=40, seed=2)
    a.update(logits, target, groups=groups)
    b.update(logits * 0.5, target, groups=groups)
    a_json, b_json = (json.loads(json.dumps(s.to_dict())) for s in (a, b))
    for metric in ("ece", "nll", "accuracy"):
        assert paired_replicate_interval(a_json, b_json, metric, 0.9) == pytest.approx(
            paired_interval(a, b, metric, 0.9), rel=1e-12)
    a_json["replicates"]["ece"][0] = None
    difference = np.array(a_json["replicates"]["ece"][1:]) - np.array(b_json["replicates"]["ece"][1:])
    assert paired_replicate_interval(a_json, b_json) == pytest.approx(
        tuple(np.percentile(difference, [2.5, 97.5])), rel=1e-12)
    c = CalibrationStats(10, bootstrap=40, seed=3)
    c.update(logits, target, groups=groups)
    with pytest.raises(ValueError, match="same seed"):
        paired_replicate_interval(a_json, c.to_dict())


def test_stats_rebuilt_from_summed_sums_keep_their_replicates():
    logits, target, groups = grouped_predictions(7)
    stats = CalibrationStats(10, bootstrap=20, seed=3)
    stats.update(logits, target, groups=groups)
    rebuilt = CalibrationStats.from_sums(stats.counts, stats.conf_sums, stats.correct_sums,
                                         stats.nll_sum, stats.brier_sum,
                                         replicate_sums=stats.replicate_sums, seed=3)
    for metric in METRICS:
        assert rebuilt.interval(metric) == stats.interval(metric)
    assert paired_interval(rebuilt, stats) == (0.0, 0.0)
    with pytest.raises(ValueError, match="^replicate_sums: must have shape"):
        CalibrationStats.from_sums(stats.counts, stats.conf_sums, stats.correct_sums,
                                   replicate_sums=stats.replicate_sums[:, :5])


def test_bad_input_names_the_argument():
    logits, target, groups = grouped_predictions(8, n=50)
    with pytest.raises(ValueError, match=r"^bootstrap: must be an integer >= 0, got -1$"):
        CalibrationStats(bootstrap=-1)
    with pytest.raises(ValueError, match=r"^seed: must be an integer >= 0"):
        CalibrationStats(bootstrap=3, seed=-2)
    stats = CalibrationStats(10, bootstrap=10)
    stats.update(logits, target, groups=groups)
    for level in (0.0, 1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"^level: must be in \(0, 1\)"):
            stats.interval("ece", level)
    with pytest.raises(ValueError, match=r"^metric: must be one of ece, mce, .*, got 'ECE'$"):
        stats.interval("ECE")
    with pytest.raises(ValueError, match=r"^metric: must be one of"):
        paired_interval(stats, stats, metric="marginal_ece")
    plain = CalibrationStats(10)
    plain.update(logits, target)
    with pytest.raises(ValueError, match=r"^bootstrap: an interval needs .*got 0$"):
        plain.ece_interval()
    with pytest.raises(ValueError, match=r"^bootstrap: an interval needs"):
        plain.interval("nll")
    for other in (CalibrationStats(10, bootstrap=10, seed=1), CalibrationStats(10, bootstrap=11)):
        other.update(logits, target, groups=groups)
        with pytest.raises(ValueError, match=r"^b: must be paired with a: same (seed|bootstrap)"):
            paired_interval(stats, other)
        with pytest.raises(ValueError, match=r"^(seed|bootstrap): merged statistics must share it"):
            stats.merge(other)
    positional = CalibrationStats(10, bootstrap=10)
    positional.update(logits, target)
    with pytest.raises(ValueError, match=r"^b: must be paired with a: same positions \(0\), got 50$"):
        paired_interval(stats, positional)
    with pytest.raises(ValueError, match=r"^groups: must hold one id per target position \(50\)"):
        stats.update(logits, target, groups=groups[:-1])
    with pytest.raises(ValueError, match=r"^groups: must hold integer ids"):
        stats.update(logits, target, groups=groups.double())
