"""The fused output-layer losses against the unfused ones (plain autograd on hidden @ W.T + b)."""
import doctest
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ls_plugins.linear_losses
from ls_plugins.linear_losses import (linear_distillation_terms, linear_loss_terms,
                                      linear_smoothed_cross_entropy)
from ls_plugins.losses import (distillation_terms, smoothed_cross_entropy, topk_teacher,
                               unigram_prior)

RELATIVE = {torch.float64: 1e-9, torch.float32: 1e-5}


def layer(n, d, k, dtype, *, bias=True, pad=None, seed=0, shape=None):
    """hidden (n, d), weight (k, d), bias (k,) requiring gradients; targets with every 4th
    position (and the last) set to ``pad``."""
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, d, generator=g, dtype=dtype) * 2).requires_grad_()
    weight = (torch.randn(k, d, generator=g, dtype=dtype) / d ** 0.5).requires_grad_()
    b = (torch.randn(k, generator=g, dtype=dtype)).requires_grad_() if bias else None
    target = torch.randint(0, k, (n,), generator=g)
    if pad is not None:
        target[::4] = pad
        target[-1] = pad
    if shape is not None:
        hidden = hidden.detach().reshape(*shape, d).requires_grad_()
        target = target.reshape(shape)
    return hidden, weight, b, target


def unfused_logits(hidden, weight, bias):
    return hidden @ weight.T + (0 if bias is None else bias)


def gradients(value, inputs, seed=1):
    """Gradients of a random weighting of ``value`` (a scalar or per-position losses), so that
    reduction="none" is checked with a different upstream gradient per position."""
    upstream = torch.rand(value.shape, generator=torch.Generator().manual_seed(seed),
                          dtype=value.dtype) + 0.5
    inputs = [x for x in inputs if x is not None]
    return torch.autograd.grad((value * upstream).sum(), inputs)


def assert_same(ours, reference, dtype):
    """Equal to the relative tolerance of ``dtype``, elementwise or relative to the largest
    element (a gradient entry that is a difference of nearly equal terms keeps only the
    tensor's absolute rounding error)."""
    for a, b in zip(ours, reference):
        rel = RELATIVE[dtype]
        torch.testing.assert_close(a, b, rtol=rel, atol=rel * b.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n, d, k, alpha, chunk", [
    (37, 8, 23, 0.0, 5), (37, 8, 23, 0.1, 5), (64, 16, 101, 0.3, 64), (50, 4, 7, 0.9, 3),
    (19, 12, 300, 0.1, None)])
@pytest.mark.parametrize("prior_kind", ["uniform", "unigram"])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_smoothed_ce_equals_unfused(dtype, n, d, k, alpha, chunk, prior_kind, reduction):
    pad = 1 if chunk != 3 else -100           # padding inside [0, K) and outside it
    hidden, weight, bias, target = layer(n, d, k, dtype, bias=(k != 7), pad=pad)
    prior = None
    if prior_kind == "unigram":
        prior = unigram_prior(torch.arange(1, k + 1, dtype=torch.float64) ** 1.5)
    options = dict(prior=prior, ignore_index=pad, reduction=reduction)
    ours = linear_smoothed_cross_entropy(hidden, weight, target, alpha, bias=bias,
                                         chunk_size=chunk, **options)
    reference = smoothed_cross_entropy(unfused_logits(hidden, weight, bias), target, alpha,
                                       **options)
    assert ours.dtype == reference.dtype == dtype
    assert_same([ours], [reference], dtype)
    assert_same(gradients(ours, [hidden, weight, bias]),
                gradients(reference, [hidden, weight, bias]), dtype)


def test_padding_gets_no_gradient_and_nothing_padded_gives_the_plain_sum():
    hidden, weight, bias, target = layer(20, 6, 13, torch.float64, pad=1)
    loss = linear_smoothed_cross_entropy(hidden, weight, target, 0.2, bias=bias, ignore_index=1,
                                         chunk_size=7)
    (grad_hidden,) = torch.autograd.grad(loss, [hidden])
    padded = target.eq(1)
    assert padded.sum() >= 5
    assert grad_hidden[padded].abs().max() == 0.0
    assert grad_hidden[~padded].abs().min() > 0.0
    no_pad = linear_smoothed_cross_entropy(hidden, weight, target, 0.2, bias=bias)
    reference = smoothed_cross_entropy(unfused_logits(hidden, weight, bias), target, 0.2)
    torch.testing.assert_close(no_pad, reference, rtol=1e-9, atol=0)


def test_batch_shaped_input_and_per_position_losses():
    hidden, weight, bias, target = layer(24, 5, 17, torch.float64, pad=1, shape=(4, 6))
    ours = linear_loss_terms(hidden, weight, target, bias=bias, alpha=0.1, ignore_index=1,
                             reduction="none", chunk_size=5, predict=True)
    logits = unfused_logits(hidden, weight, bias)
    reference = smoothed_cross_entropy(logits, target, 0.1, ignore_index=1, reduction="none")
    assert ours.loss.shape == ours.nll.shape == ours.predicted.shape == (4, 6)
    torch.testing.assert_close(ours.loss, reference, rtol=1e-9, atol=1e-12)
    nll = smoothed_cross_entropy(logits, target, 0.0, ignore_index=1, reduction="none")
    torch.testing.assert_close(ours.nll, nll, rtol=1e-9, atol=1e-12)
    assert torch.equal(ours.predicted, logits.argmax(-1))
    assert not ours.nll.requires_grad and ours.loss.requires_grad


def test_without_gradients_and_with_a_frozen_weight():
    hidden, weight, bias, target = layer(30, 8, 40, torch.float32, pad=1)
    reference = smoothed_cross_entropy(unfused_logits(hidden, weight, bias), target, 0.1,
                                       ignore_index=1)
    with torch.no_grad():
        value = linear_smoothed_cross_entropy(hidden, weight, target, 0.1, bias=bias,
                                              ignore_index=1, chunk_size=7)
    assert value.grad_fn is None
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=0)
    frozen = weight.detach()
    ours = linear_smoothed_cross_entropy(hidden, frozen, target, 0.1, ignore_index=1)
    reference = smoothed_cross_entropy(hidden @ frozen.T, target, 0.1, ignore_index=1)
    assert_same(torch.autograd.grad(ours, [hidden]), torch.autograd.grad(reference, [hidden]),
                torch.float32)


def test_float32_math_under_autocast_and_gradients_in_the_inputs_dtype():
    hidden, weight, bias, target = layer(40, 16, 64, torch.float32, pad=1)
    reference = smoothed_cross_entropy(unfused_logits(hidden, weight, bias), target, 0.1,
                                       ignore_index=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_smoothed_cross_entropy(hidden, weight, target, 0.1, bias=bias,
                                             ignore_index=1, chunk_size=16)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0)  # bf16 logits: ~1e-2 off
    assert_same(torch.autograd.grad(ours, [hidden, weight, bias]),
                torch.autograd.grad(reference, [hidden, weight, bias]), torch.float32)
    half = [x.detach().bfloat16().requires_grad_() for x in (hidden, weight, bias)]
    ours = linear_smoothed_cross_entropy(half[0], half[1], target, 0.1, bias=half[2],
                                         ignore_index=1)
    wide = [x.detach().float().requires_grad_() for x in half]  # same values, float32 math
    reference = smoothed_cross_entropy(unfused_logits(*wide), target, 0.1, ignore_index=1)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=0)
    for ours_grad, reference_grad, x in zip(torch.autograd.grad(ours, half),
                                            torch.autograd.grad(reference, wide), half):
        assert ours_grad.dtype == x.dtype == torch.bfloat16
        torch.testing.assert_close(ours_grad, reference_grad.bfloat16())


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_never_holds_the_tokens_by_classes_logits(reduction):
    n, d, k, chunk = 256, 8, 512, 32
    hidden, weight, bias, target = layer(n, d, k, torch.float32, pad=1)
    g = torch.Generator().manual_seed(2)
    teacher = topk_teacher(torch.log_softmax(torch.randn(n, k, generator=g), -1), 4)
    with LargestTensor() as fused:
        loss = linear_distillation_terms(hidden, weight, target, teacher, beta=0.5,
                                         temperature=2.0, alpha=0.1, bias=bias, ignore_index=1,
                                         reduction=reduction, chunk_size=chunk)[0]
        loss.sum().backward()
    assert fused.largest == chunk * k  # the chunk's buffer; N x K would be 8x that
    with LargestTensor() as unfused:
        distillation_terms(unfused_logits(hidden, weight, bias), None, target, beta=0.5,
                           temperature=2.0, alpha=0.1, ignore_index=1, teacher_probs=teacher,
                           reduction=reduction)[0].sum().backward()
    assert unfused.largest == n * k


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("temperature, tail, scale_by_t2, beta, k_kept", [
    (1.0, "uniform", False, 0.5, 5), (2.0, "uniform", True, 0.7, 5), (0.5, "drop", False, 1.0, 3),
    (3.0, "drop", True, 0.3, 23), (1.0, "uniform", False, 0.0, 1)])
@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_topk_distillation_equals_unfused(dtype, temperature, tail, scale_by_t2, beta, k_kept,
                                          reduction):
    n, d, k = 41, 8, 23
    hidden, weight, bias, target = layer(n, d, k, dtype, pad=-100 if tail == "drop" else 2,
                                         bias=(beta != 1.0))
    g = torch.Generator().manual_seed(3)
    teacher_log_probs = torch.log_softmax(torch.randn(n, k, generator=g, dtype=dtype) * 2 / temperature, -1)
    teacher = topk_teacher(teacher_log_probs, k_kept, tail=tail)
    options = dict(beta=beta, temperature=temperature, alpha=0.1, reduction=reduction,
                   ignore_index=target[0].item(), scale_by_t2=scale_by_t2)
    ours = linear_distillation_terms(hidden, weight, target, teacher, bias=bias, chunk_size=6,
                                     **options)
    reference = distillation_terms(unfused_logits(hidden, weight, bias), None, target,
                                   teacher_probs=teacher, **options)
    assert_same(ours, reference, dtype)
    assert_same(gradients(ours[0], [hidden, weight, bias]),
                gradients(reference[0], [hidden, weight, bias]), dtype)


def test_dense_teacher_falls_back_to_the_unfused_loss():
    hidden, weight, bias, target = layer(30, 6, 11, torch.float64, pad=1)
    teacher = torch.softmax(torch.randn(30, 11, dtype=torch.float64), -1)
    options = dict(beta=0.5, temperature=2.0, alpha=0.1, ignore_index=1, teacher_probs=teacher)
    ours = linear_distillation_terms(hidden, weight, target, bias=bias, **options)
    reference = distillation_terms(unfused_logits(hidden, weight, bias), None, target, **options)
    assert_same(ours, reference, torch.float64)


def test_a_second_backward_is_refused_and_per_position_losses_allow_it():
    hidden, weight, bias, target = layer(10, 4, 9, torch.float64)
    loss = linear_smoothed_cross_entropy(hidden, weight, target, 0.1, bias=bias)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass per forward pass"):
        loss.backward()
    per_position = linear_smoothed_cross_entropy(hidden, weight, target, 0.1, bias=bias,
                                                 reduction="none")
    first = torch.autograd.grad(per_position.sum(), [weight], retain_graph=True)[0]
    second = torch.autograd.grad(per_position.sum(), [weight])[0]
    assert torch.equal(first, second)


def test_bad_arguments_are_refused():
    hidden, weight, bias, target = layer(10, 4, 9, torch.float32)
    with pytest.raises(ValueError, match="alpha"):
        linear_smoothed_cross_entropy(hidden, weight, target, 1.0)
    with pytest.raises(ValueError, match="reduction"):
        linear_smoothed_cross_entropy(hidden, weight, target, 0.1, reduction="avg")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_smoothed_cross_entropy(hidden, weight, target, 0.1, chunk_size=0)
    with pytest.raises(ValueError, match="weight must be"):
        linear_smoothed_cross_entropy(hidden, weight.T, target, 0.1)
    with pytest.raises(ValueError, match="target must have"):
        linear_smoothed_cross_entropy(hidden, weight, target[:5], 0.1)
    with pytest.raises(ValueError, match="prior must have"):
        linear_smoothed_cross_entropy(hidden, weight, target, 0.1, prior=torch.ones(8) / 8)
    teacher = topk_teacher(torch.log_softmax(torch.randn(10, 8), -1), 2)
    with pytest.raises(ValueError, match="teacher must cover"):
        linear_distillation_terms(hidden, weight, target, teacher, beta=0.5)


def test_docstring_example():
    result = doctest.testmod(ls_plugins.linear_losses)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("first", ["ls_plugins.losses", "ls_plugins.linear_losses"])
def test_importable_from_losses_whichever_module_loads_first(first):
    code = (f"import {first}\n"
            "from ls_plugins.losses import linear_smoothed_cross_entropy, linear_distillation_terms\n"
            "import ls_plugins.linear_losses as m\n"
            "assert linear_smoothed_cross_entropy is m.linear_smoothed_cross_entropy\n"
            "assert linear_distillation_terms is m.linear_distillation_terms\n")
    subprocess.run([sys.executable, "-c", code], check=True)
