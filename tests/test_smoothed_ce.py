"""The smoothed_ce criterion: equivalence with fairseq's criteria, exact sharded ECE, end to end."""
import re
import sys

import numpy as np
import pytest
import torch
from fairseq.logging import metrics

from conftest import (REPO, TINY_TRANSFORMER, command, fairseq_setup, fairseq_train, first_batch,
                      numpy_calibration, run)


@pytest.fixture(scope="module")
def fairseq_model(bible):
    cfg, task, model = fairseq_setup(bible / "bin")
    model.eval()
    sample = first_batch(task)
    return task, model, sample


def criterion(task, name, **options):
    from fairseq.criterions import CRITERION_REGISTRY
    cls = CRITERION_REGISTRY[name]
    return cls(task, sentence_avg=False, **options)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3])
def test_equals_fairseq_label_smoothed_cross_entropy(fairseq_model, alpha):
    task, model, sample = fairseq_model
    k = len(task.target_dictionary)
    ours = criterion(task, "smoothed_ce", label_smoothing=alpha)
    theirs = criterion(task, "label_smoothed_cross_entropy", label_smoothing=alpha * (k - 1) / k)
    with torch.no_grad():
        loss, size, log = ours(model, sample)
        ref_loss, ref_size, ref_log = theirs(model, sample)
    assert size == ref_size == sample["ntokens"]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(log["nll_loss"], ref_log["nll_loss"], rtol=1e-6, atol=1e-4)
    assert loss.item() > log["nll_loss"].item()  # smoothing adds the entropy-like term


def test_sentence_avg_and_ignore_prefix_size_match_fairseq(fairseq_model):
    from fairseq.criterions import CRITERION_REGISTRY
    task, model, sample = fairseq_model
    k = len(task.target_dictionary)
    options = {"sentence_avg": True, "ignore_prefix_size": 2, "report_accuracy": True}
    ours = CRITERION_REGISTRY["smoothed_ce"](task, label_smoothing=0.1, **options)
    theirs = CRITERION_REGISTRY["label_smoothed_cross_entropy"](
        task, label_smoothing=0.1 * (k - 1) / k, **options)
    with torch.no_grad():
        loss, size, log = ours(model, sample)
        ref_loss, ref_size, ref_log = theirs(model, sample)
        full_loss, _, _ = criterion(task, "smoothed_ce", label_smoothing=0.1)(model, sample)
    assert size == ref_size == sample["target"].size(0)  # sentences, not tokens
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(log["nll_loss"], torch.as_tensor(ref_log["nll_loss"], dtype=ref_loss.dtype),
                               rtol=1e-6, atol=1e-4)
    assert (log["n_correct"], log["total"]) == (ref_log["n_correct"], ref_log["total"])
    assert log["total"] == int(sample["target"][:, 2:].ne(task.target_dictionary.pad()).sum())
    assert loss.item() < full_loss.item()  # two target positions per sentence are left out
    assert reduced(ours, [log])["loss"] == pytest.approx(
        reduced(theirs, [ref_log])["loss"], abs=2e-3)


def test_alpha_zero_equals_plain_cross_entropy(fairseq_model):
    task, model, sample = fairseq_model
    with torch.no_grad():
        loss, _, log = criterion(task, "smoothed_ce", label_smoothing=0.0)(model, sample)
        ref_loss, _, _ = criterion(task, "cross_entropy")(model, sample)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(log["nll_loss"], ref_loss, rtol=1e-6, atol=1e-4)


def test_gradients_match_fairseq(fairseq_model):
    task, model, sample = fairseq_model
    k = len(task.target_dictionary)
    grads = []
    for name, eps in (("smoothed_ce", 0.1), ("label_smoothed_cross_entropy", 0.1 * (k - 1) / k)):
        model.zero_grad()
        loss, _, _ = criterion(task, name, label_smoothing=eps)(model, sample)
        loss.backward()
        grads.append(model.decoder.embed_tokens.weight.grad.clone())
    model.zero_grad()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_unigram_prior_uses_target_dictionary_counts(fairseq_model):
    task, model, sample = fairseq_model
    crit = criterion(task, "smoothed_ce", label_smoothing=0.2, smoothing_prior="unigram")
    counts = torch.tensor(task.target_dictionary.count, dtype=torch.float64)
    torch.testing.assert_close(crit.prior.double(), counts / counts.sum(), rtol=1e-6, atol=1e-9)
    with torch.no_grad():
        loss, _, log = crit(model, sample)
        net_output = model(**sample["net_input"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True).view(-1, len(counts))
    target = sample["target"].view(-1)
    keep = target.ne(task.target_dictionary.pad())
    expected = (0.8 * -lprobs[keep].gather(-1, target[keep, None]).squeeze(-1)
                - 0.2 * (lprobs[keep] @ (counts / counts.sum()).float())).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-3)


def reduced(crit, logging_outputs):
    with metrics.aggregate(new_root=True) as agg:
        crit.reduce_metrics(logging_outputs)
        return agg.get_smoothed_values()


def test_validation_ece_from_two_summed_shards_equals_whole_batch(fairseq_model):
    task, model, sample = fairseq_model
    crit = criterion(task, "smoothed_ce", label_smoothing=0.1)
    crit.eval()
    half = sample["target"].size(0) // 2

    def shard(rows):
        return {"id": sample["id"][rows], "nsentences": len(sample["id"][rows]),
                "ntokens": int(sample["target"][rows].ne(crit.padding_idx).sum()),
                "net_input": {k: v[rows] for k, v in sample["net_input"].items()},
                "target": sample["target"][rows]}

    with torch.no_grad():
        _, _, whole = crit(model, sample)
        _, _, first = crit(model, shard(slice(0, half)))
        _, _, second = crit(model, shard(slice(half, None)))
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    summed = {key: first[key] + second[key] for key in first}  # what fairseq's all-reduce does
    keep = sample["target"].ne(crit.padding_idx)
    probs = lprobs.double().exp()[keep].numpy()
    target = sample["target"][keep].numpy()
    ece, mce, _ = numpy_calibration(probs, target, 15)
    one_hot = np.eye(probs.shape[1])[target]
    expected = {"ece": ece, "mce": mce, "confidence": probs.max(1).mean(),
                "brier": ((probs - one_hot) ** 2).sum(1).mean()}
    from_shards = reduced(crit, [summed])
    for name, value in expected.items():
        assert from_shards[name] == pytest.approx(value, abs=1e-6), name
        assert from_shards[name] == pytest.approx(reduced(crit, [whole])[name], abs=1e-12)
        assert from_shards[name] == pytest.approx(reduced(crit, [first, second])[name], abs=1e-12)
    assert int(keep.sum()) == sample["ntokens"]


def train_losses(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"train_inner \| .*? loss=([0-9.]+)", log)]


def test_end_to_end_train_generate_and_restore(bible, tmp_path):
    result = fairseq_train(bible / "bin", tmp_path, "--criterion", "smoothed_ce", "--label-smoothing",
                           "0.1", "--report-accuracy", max_update=60)
    log = result.stdout + result.stderr
    losses = train_losses(log)
    assert len(losses) >= 5 and losses[-1] < losses[0] - 1.0
    valid = re.findall(r"valid on 'valid' subset \| loss ([0-9.]+) \| nll_loss ([0-9.]+).*?\| ece ([0-9.]+)", log)
    assert valid and 0.0 <= float(valid[-1][2]) < 1.0
    checkpoint = tmp_path / "checkpoint_last.pt"
    # fairseq-generate loads the checkpoint under torch's safe loading (weights_only=True)
    gen = run([command("fairseq-generate"), bible / "bin", "--user-dir", "ls_plugins", "--path",
               checkpoint, "--beam", "2", "--batch-size", "50", "--cpu", "--gen-subset", "valid",
               "--remove-bpe", "sentencepiece", "--max-len-b", "60"])
    bleu = re.search(r"Generate valid with beam=2: BLEU4 = ([0-9.]+)", gen.stdout)
    assert bleu, gen.stdout[-2000:]
    # training continues from the checkpoint; --user-dir as an absolute path from another directory
    resumed = run([command("fairseq-train"), bible / "bin", "--user-dir", REPO / "ls_plugins",
                   *TINY_TRANSFORMER, "--criterion", "smoothed_ce", "--label-smoothing", "0.1",
                   "--restore-file", checkpoint, "--save-dir", tmp_path, "--max-update", "70"],
                  cwd=tmp_path)
    assert "Loaded checkpoint" in resumed.stdout + resumed.stderr
    assert re.search(r"num_updates 70", resumed.stdout + resumed.stderr)


def test_checkpoint_loads_safely_and_names_a_missing_global(ls_checkpoint, tmp_path):
    code = f"""
import pickle, torch, ls_plugins
state = torch.load({str(ls_checkpoint)!r})   # weights_only=True is torch's default
assert state["args"] is None or hasattr(state["args"], "__dict__")
class Unknown: pass
torch.save({{"x": Unknown()}}, {str(tmp_path / 'bad.pt')!r})
ls_plugins.register_fairseq()
from fairseq import checkpoint_utils
try:
    checkpoint_utils.load_checkpoint_to_cpu({str(tmp_path / 'bad.pt')!r})
except pickle.UnpicklingError as err:
    print(err)
"""
    out = run([sys.executable, "-c", code]).stdout
    assert "__main__.Unknown" in out and "add_safe_globals" in out and "bad.pt" in out


@pytest.mark.parametrize("option,value,message", [
    ("--label-smoothing", "-0.1", "must be in [0, 1), got -0.1"),
    ("--label-smoothing", "1.0", "must be in [0, 1), got 1.0"),
    ("--label-smoothing", "1.5", "must be in [0, 1), got 1.5"),
    ("--label-smoothing", "nan", "must be in [0, 1), got nan"),
    ("--smoothing-prior", "bigram", "must be one of uniform, unigram, got 'bigram'"),
    ("--calibration-bins", "0", "must be an integer >= 1, got 0"),
    ("--ignore-prefix-size", "-1", "must be an integer >= 0, got -1"),
    ("--calibration-bootstrap", "-1", "must be an integer >= 0, got -1"),
    ("--calibration-seed", "x", "must be an integer >= 0, got 'x'")])
def test_bad_options_stop_with_one_line(bible, tmp_path, option, value, message):
    result = run([command("fairseq-train"), bible / "bin", "--user-dir", "ls_plugins", "--arch",
                  "transformer", "--criterion", "smoothed_ce", option, value, "--save-dir",
                  tmp_path / "ck", "--cpu"], check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"fairseq-train: error: {option}: {message}"]
    assert not (tmp_path / "ck").exists()


def test_math_modules_never_import_fairseq():
    """The math layer (DESIGN: losses, calibration, analysis import only torch and numpy) and the
    vision trainer's modules load without fairseq; ls-vision's real run is checked in
    test_vision_train.py."""
    modules = ["losses", "topk_teacher", "distillation_kernel", "linear_losses", "calibration",
               "calibration_bins", "calibration_fit", "calibration_predictions", "alignment", "bootstrap", "analysis",
               "plots", "cli", "atomic", "checkpoints", "vision.train", "vision.report"]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module('ls_plugins.' + name)\n"
            "    assert 'fairseq' not in sys.modules, name + ' imported fairseq'\n"
            "print('ok')")
    assert run([sys.executable, "-c", code], cwd="/").stdout.strip() == "ok"
