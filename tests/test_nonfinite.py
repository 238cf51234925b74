"""A nan or inf in the logits stops smoothed_ce and distillation_ce with one line naming the term,
unless fairseq's loss scaler (half-precision training) handles it as an overflow."""
import re

import pytest
import torch

from conftest import TINY_TRANSFORMER, command, fairseq_setup, first_batch, run

BOS = 0  # never a target: its log-probability can be -inf without touching the nll


def build(bible, *criterion_args):
    cfg, task, model = fairseq_setup(bible / "bin", "--dropout", "0", *criterion_args)
    sample = first_batch(task)
    assert not sample["target"].eq(BOS).any()
    return model, task.build_criterion(cfg.criterion), sample


def poison(model, value, cls, dtype=None):
    """Set the logits of class ``cls`` to ``value`` (and cast them to ``dtype``, as a model run
    in half precision would give them)."""
    def hook(module, inputs, output):
        output = output.index_fill(-1, torch.tensor([cls]), value)
        return output if dtype is None else output.to(dtype)
    return model.decoder.output_projection.register_forward_hook(hook)


def refusal(criterion, model, sample, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        criterion(model, sample)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def smoothed(bible):
    return build(bible, "--criterion", "smoothed_ce", "--label-smoothing", "0.1")


@pytest.fixture(scope="module")
def distilled(bible, ls_checkpoint):
    return build(bible, "--criterion", "distillation_ce", "--teacher-path", str(ls_checkpoint),
                 "--distill-weight", "0.5", "--distill-temperature", "2")


@pytest.mark.parametrize("training", [True, False])
def test_nan_logits_name_the_nll_term(smoothed, capsys, training):
    model, criterion, sample = smoothed
    model.train(training)
    numel = sample["target"].numel() * len(criterion.task.target_dictionary)
    with poison(model, float("nan"), 10):
        line = refusal(criterion, model, sample, capsys)
    assert line.endswith(
        f"error: smoothed_ce: the loss and the terms it logs must be finite, got nan in the nll "
        f"term; the model's log-probabilities hold {numel} nan, 0 +inf and 0 -inf among "
        f"{numel} values"), line


def test_minus_inf_logit_names_the_smoothing_term(smoothed, capsys):
    """log p = -inf for one class that is never a target: the nll is finite, the smoothing term
    (the mean of log p over all classes) is +inf."""
    model, criterion, sample = smoothed
    model.eval()
    with poison(model, float("-inf"), BOS):
        line = refusal(criterion, model, sample, capsys)
    rows = sample["target"].numel()
    assert re.search(r"error: smoothed_ce: the loss and the terms it logs must be finite, got inf "
                     rf"in the smoothing term; .* hold 0 nan, 0 \+inf and {rows} -inf among", line)


def test_finite_loss_passes_and_alpha_zero_ignores_a_class_never_predicted(bible, smoothed, capsys):
    model, criterion, sample = smoothed
    model.eval()
    loss, _, log = criterion(model, sample)
    assert torch.isfinite(loss) and torch.isfinite(log["nll_loss"])
    _, plain, _ = build(bible, "--criterion", "smoothed_ce")
    with poison(model, float("-inf"), BOS):
        loss, _, log = plain(model, sample)
    assert torch.isfinite(loss) and loss == log["nll_loss"]
    assert capsys.readouterr().err == ""


def test_half_precision_training_leaves_overflows_to_the_loss_scaler(smoothed, capsys):
    """float16 logits in training (fairseq --fp16: a loss scaler skips the update); in
    validation there is no scaler, and bfloat16 (fairseq --bf16) has none either."""
    model, criterion, sample = smoothed
    model.train()
    with poison(model, float("nan"), 10, torch.float16):
        loss, _, _ = criterion(model, sample)
    assert torch.isnan(loss)
    model.eval()
    with poison(model, float("nan"), 10, torch.float16):
        assert "nll term" in refusal(criterion, model, sample, capsys)
    model.train()
    with poison(model, float("nan"), 10, torch.bfloat16):
        assert "nll term" in refusal(criterion, model, sample, capsys)


def test_distillation_names_the_nll_and_the_soft_term(distilled, capsys):
    model, criterion, sample = distilled
    model.train()
    with poison(model, float("nan"), 10):
        line = refusal(criterion, model, sample, capsys)
    assert re.search(r"error: distillation_ce: the loss and the terms it logs must be finite, got "
                     r"nan in the nll term; the student's log-probabilities hold [1-9]\d* nan.*; "
                     r"the teacher's probabilities hold 0 nan, 0 \+inf and 0 -inf among", line)
    # the teacher (a dense distribution) gives BOS some mass; the student none
    with poison(model, float("-inf"), BOS):
        line = refusal(criterion, model, sample, capsys)
    assert re.search(r"distillation_ce: .* got (inf|nan) in the soft \(teacher\) term", line), line
    model.eval()
    loss, _, log = criterion(model, sample)
    assert torch.isfinite(loss) and torch.isfinite(log["soft_loss"])


def test_fairseq_train_stops_at_the_first_non_finite_loss(bible, tmp_path):
    """End to end: a learning rate of 1e12 makes the second batch's logits nan; fairseq-train
    stops there with our line (not fairseq's FloatingPointError traceback) and leaves no save dir."""
    result = run([command("fairseq-train"), bible / "bin", "--user-dir", "ls_plugins",
                  *TINY_TRANSFORMER, "--optimizer", "sgd", "--lr", "1e12", "--lr-scheduler", "fixed",
                  "--log-interval", "1", "--max-update", "20", "--criterion", "smoothed_ce",
                  "--label-smoothing", "0.1", "--save-dir", tmp_path / "ck"], check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "fairseq-train: error: smoothed_ce: the loss and the terms it logs must be finite, got nan "
        "in the nll term; the model's log-probabilities hold "), lines
    assert "num_updates=1," in result.stdout and "num_updates=2," not in result.stdout
    assert not (tmp_path / "ck").exists()
