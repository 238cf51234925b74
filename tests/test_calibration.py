"""CalibrationStats and friends against references computed another way."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import numpy_calibration

from ls_plugins.calibration import (CalibrationStats, bin_sums, expected_calibration_error,
                                    fit_temperature, update_at_temperatures)


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
