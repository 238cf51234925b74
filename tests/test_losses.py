"""smoothed_cross_entropy against torch's own label_smoothing and an explicit target distribution."""
import pytest
import torch
import torch.nn.functional as F

from ls_plugins.losses import smoothed_cross_entropy, unigram_prior

K = 11
PAD = -100


def random_batch(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, K, generator=g) * 3
    target = torch.randint(0, K, (n,), generator=g)
    target[::7] = PAD
    return logits, target


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.1, 0.5, 0.9])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_equals_torch_label_smoothing_with_padding(alpha, reduction):
    logits, target = random_batch()
    ours_in = logits.clone().requires_grad_()
    ref_in = logits.clone().requires_grad_()
    ours = smoothed_cross_entropy(ours_in, target, alpha, ignore_index=PAD, reduction=reduction)
    ref = F.cross_entropy(ref_in, target, label_smoothing=alpha, ignore_index=PAD, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    (ours.sum() * 1.7).backward()
    (ref.sum() * 1.7).backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6)


def test_without_ignore_index_and_3d_logits():
    logits = torch.randn(3, 5, K)
    target = torch.randint(0, K, (3, 5))
    ref = F.cross_entropy(logits.reshape(-1, K), target.reshape(-1), label_smoothing=0.2)
    torch.testing.assert_close(smoothed_cross_entropy(logits, target, 0.2, reduction="mean"), ref)


def explicit_target_distribution(target, alpha, prior):
    """y (1 - alpha) + alpha * prior, built row by row."""
    rows = []
    for t in target.tolist():
        one_hot = torch.zeros(K)
        one_hot[t] = 1.0
        rows.append(one_hot * (1 - alpha) + alpha * prior)
    return torch.stack(rows)


def test_unigram_prior_targets_sum_to_one_and_match_explicit_cross_entropy():
    counts = torch.arange(1, K + 1, dtype=torch.float64) ** 2
    prior = unigram_prior(counts)
    assert prior.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert prior[3].item() == pytest.approx(16 / counts.sum().item(), rel=1e-6)
    logits, target = random_batch(seed=3)
    keep = target.ne(PAD)
    q = explicit_target_distribution(target[keep], 0.3, prior)
    torch.testing.assert_close(q.sum(-1), torch.ones(len(q)))
    reference = -(q * F.log_softmax(logits[keep], -1)).sum()
    ours = smoothed_cross_entropy(logits, target, 0.3, prior=prior, ignore_index=PAD)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_unigram_prior_with_equal_counts_is_uniform():
    logits, target = random_batch(seed=5)
    prior = unigram_prior([7] * K)
    torch.testing.assert_close(prior, torch.full((K,), 1.0 / K))
    torch.testing.assert_close(
        smoothed_cross_entropy(logits, target, 0.25, prior=prior, ignore_index=PAD),
        smoothed_cross_entropy(logits, target, 0.25, ignore_index=PAD))


def test_bad_alpha_prior_and_reduction_are_refused():
    logits, target = random_batch()
    with pytest.raises(ValueError, match="counts: must be a 1-D vector"):
        unigram_prior([0, 0, 0])
    with pytest.raises(ValueError, match="reduction: must be one of sum, mean, none, got .avg."):
        smoothed_cross_entropy(logits, target, 0.1, ignore_index=PAD, reduction="avg")
    for alpha in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"alpha: must be in \[0, 1\)"):
            smoothed_cross_entropy(logits, target, alpha)


def test_float64_input_is_not_narrowed():
    """float64 logits give torch's float64 result (not a float32 one, 1e-4 away at this scale)."""
    g = torch.Generator().manual_seed(11)
    logits = (torch.randn(256, 50, generator=g, dtype=torch.float64) * 30).requires_grad_()
    target = torch.randint(0, 50, (256,), generator=g)
    target[::5] = PAD
    ref_in = logits.detach().clone().requires_grad_()
    ours = smoothed_cross_entropy(logits, target, 0.1, ignore_index=PAD)
    ref = F.cross_entropy(ref_in, target, label_smoothing=0.1, ignore_index=PAD, reduction="sum")
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad, ref_in.grad, rtol=1e-12, atol=1e-12)
    # half precision is widened to float32, never computed in half
    half = smoothed_cross_entropy(logits.detach().half(), target, 0.1, ignore_index=PAD)
    assert half.dtype == torch.float32
