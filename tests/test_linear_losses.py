"""The fused output-layer losses against the unfused ones (plain autograd on hidden @ W.T + b)."""
import doctest
import json
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
    with pytest.raises(ValueError, match="alpha: must be in"):
        linear_smoothed_cross_entropy(hidden, weight, target, 1.0)
    with pytest.raises(ValueError, match="reduction: must be one of sum, mean, none, got 'avg'"):
        linear_smoothed_cross_entropy(hidden, weight, target, 0.1, reduction="avg")
    with pytest.raises(ValueError, match="chunk_size: must be an integer >= 1, got 0"):
        linear_smoothed_cross_entropy(hidden, weight, target, 0.1, chunk_size=0)
    with pytest.raises(ValueError, match=r"weight: must have shape \(K, 4\)"):
        linear_smoothed_cross_entropy(hidden, weight.T, target, 0.1)
    with pytest.raises(ValueError, match="target: must have hidden's leading shape"):
        linear_smoothed_cross_entropy(hidden, weight, target[:5], 0.1)
    with pytest.raises(ValueError, match=r"prior: must have shape \(9,\), got \(8,\)"):
        linear_smoothed_cross_entropy(hidden, weight, target, 0.1, prior=torch.ones(8) / 8)
    teacher = topk_teacher(torch.log_softmax(torch.randn(10, 8), -1), 2)
    with pytest.raises(ValueError, match="teacher: must cover"):
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


# -- the criteria with --memory-efficient-output ---------------------------------------------

def criterion_pair(bible, *args):
    """(model in train mode, a batch, criterion without the option, criterion with it)."""
    from conftest import fairseq_setup, first_batch
    cfg, task, model = fairseq_setup(bible / "bin", "--dropout", "0", *args)
    fused_cfg, _, _ = fairseq_setup(bible / "bin", "--dropout", "0", *args,
                                    "--memory-efficient-output")
    assert fused_cfg.criterion.memory_efficient_output and not cfg.criterion.memory_efficient_output
    return (model.train(), first_batch(task), task.build_criterion(cfg.criterion),
            task.build_criterion(fused_cfg.criterion))


def step_with_gradients(criterion, model, sample):
    loss, sample_size, log = criterion(model, sample)
    params = [p for p in model.parameters() if p.requires_grad]
    return loss, sample_size, log, torch.autograd.grad(loss, params)


def assert_same_step(model, sample, plain, fused, logged):
    loss, size, log, grads = step_with_gradients(plain, model, sample)
    fused_loss, fused_size, fused_log, fused_grads = step_with_gradients(fused, model, sample)
    assert fused_size == size
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=0)
    for key in logged:
        torch.testing.assert_close(torch.as_tensor(fused_log[key], dtype=torch.float64),
                                   torch.as_tensor(log[key], dtype=torch.float64),
                                   rtol=1e-5, atol=0, msg=key)
    assert set(fused_log) == set(log)
    # relative to the largest gradient entry: some parameters (the attention's key biases) have
    # a true gradient of 0, and the rounding noise of both sides is all their gradients hold
    scale = max(g.abs().max().item() for g in grads)
    for fused_grad, grad in zip(fused_grads, grads):
        torch.testing.assert_close(fused_grad, grad, rtol=1e-5, atol=1e-5 * scale)
    model.eval()                      # validation: the unfused path, the same values exactly
    with torch.no_grad():
        _, _, eval_log = plain(model, sample)
        _, _, fused_eval_log = fused(model, sample)
    assert any(key.startswith("_cal_") for key in eval_log)
    assert {k: float(v) for k, v in fused_eval_log.items()} == {k: float(v) for k, v in eval_log.items()}


@pytest.mark.parametrize("shared", [True, False])
def test_smoothed_ce_option_gives_the_same_loss_gradients_and_logs(bible, monkeypatch, shared):
    import conftest
    if not shared:  # a separate output projection, not the embedding matrix
        monkeypatch.setattr(conftest, "TINY_TRANSFORMER", [
            a for a in conftest.TINY_TRANSFORMER if a != "--share-all-embeddings"])
    model, sample, plain, fused = criterion_pair(
        bible, "--criterion", "smoothed_ce", "--label-smoothing", "0.1", "--smoothing-prior",
        "unigram", "--report-accuracy", "--ignore-prefix-size", "1")
    assert (model.decoder.output_projection.weight is model.decoder.embed_tokens.weight) == shared
    assert_same_step(model, sample, plain, fused, ["loss", "nll_loss", "n_correct", "total"])


@pytest.mark.parametrize("teacher", [["--teacher-topk", "8"], []])  # top-k; dense (falls back)
def test_distillation_ce_option_gives_the_same_loss_gradients_and_logs(bible, ls_checkpoint,
                                                                      teacher):
    model, sample, plain, fused = criterion_pair(
        bible, "--criterion", "distillation_ce", "--teacher-path", str(ls_checkpoint),
        "--distill-temperature", "2", "--distill-weight", "0.7", "--distill-scale-t2",
        "--label-smoothing", "0.1", "--report-accuracy", *teacher)
    assert_same_step(model, sample, plain, fused,
                     ["loss", "nll_loss", "soft_loss", "teacher_incorrect", "n_correct"])


def train_log(bible, save_dir, *extra):
    from conftest import fairseq_train
    result = fairseq_train(bible / "bin", save_dir, "--criterion", "smoothed_ce",
                           "--label-smoothing", "0.1", "--log-format", "json", "--log-interval",
                           "1", "--no-save", *extra, max_update=50)
    lines = result.stdout.splitlines()
    records = {kind: [json.loads(line[line.index("{"):]) for line in lines
                      if f"| {kind} |" in line and "{" in line] for kind in ("train_inner", "valid")}
    train = [(int(r["num_updates"]), float(r["loss"])) for r in records["train_inner"]]
    valid = [float(r["valid_loss"]) for r in records["valid"]]
    return train, valid


@pytest.mark.slow  # two 50-update fairseq-train runs
def test_fairseq_train_gives_the_same_loss_curve_with_the_option(bible, tmp_path):
    plain, plain_valid = train_log(bible, tmp_path / "plain")
    fused, fused_valid = train_log(bible, tmp_path / "fused", "--memory-efficient-output")
    assert [u for u, _ in plain] == [u for u, _ in fused] == list(range(1, 51))
    assert plain[0][1] > plain[-1][1] + 1.0           # it learns
    # logged with 3 decimals: equal up to one unit of the last, after 50 updates
    assert max(abs(a - b) for (_, a), (_, b) in zip(plain, fused)) <= 1e-3
    assert len(plain_valid) == len(fused_valid) >= 1
    assert max(abs(a - b) for a, b in zip(plain_valid, fused_valid)) <= 1e-3


TINY_ARCH = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32",
             "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "32",
             "--decoder-ffn-embed-dim", "32", "--encoder-attention-heads", "2",
             "--decoder-attention-heads", "2", "--max-tokens", "500", "--max-update", "2", "--cpu",
             "--optimizer", "adam", "--lr", "0.001"]


@pytest.mark.parametrize("arch, got", [
    (["--arch", "transformer", *TINY_ARCH, "--adaptive-softmax-cutoff", "100,300"],
     "an adaptive softmax (--adaptive-softmax-cutoff)"),
    (["--arch", "lstm", "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim",
      "16", "--decoder-embed-dim", "16", "--encoder-hidden-size", "16", "--decoder-hidden-size",
      "16", "--decoder-out-embed-dim", "16", "--max-tokens", "500", "--max-update", "2", "--cpu",
      "--optimizer", "adam", "--lr", "0.001"],
     "a LSTMModel with a LSTMDecoder")])
def test_the_option_with_a_model_it_cannot_fuse_stops_with_one_line(bible, tmp_path, arch, got):
    from conftest import command, run
    result = run([command("fairseq-train"), bible / "bin", "--user-dir", "ls_plugins",
                  "--task", "translation", *arch, "--criterion", "smoothed_ce",
                  "--memory-efficient-output", "--save-dir", tmp_path / "ck"], check=False)
    assert result.returncode == 2
    allowed = ("needs a plain linear output layer" if "adaptive" in got else
               "needs a transformer decoder whose output layer is a plain linear projection")
    assert result.stderr.splitlines() == [
        f"fairseq-train: error: --memory-efficient-output: {allowed}, got {got}"]
    assert not (tmp_path / "ck").exists()
