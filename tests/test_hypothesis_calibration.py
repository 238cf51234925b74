"""Hypothesis calibration (inference calibration, Wang et al. ACL 2020) in fairseq-generate, and
the pieces it is made of: (confidence, correct) statistics, per-bin intervals, the alignment of
generated tokens to the reference."""
import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import command, run

from ls_plugins.bootstrap import poisson_weights
from ls_plugins.calibration import CalibrationStats
from ls_plugins.tasks.generation_calibration import hypothesis_predictions

GEN = ["--beam", "2", "--batch-size", "32", "--cpu", "--gen-subset", "valid", "--max-len-b", "25",
       "--seed", "3", "--task", "translation_calibration", "--scoring", "calibration"]


def aligned_correct(hypothesis, reference):
    """Independent reference of the alignment: a full table of (edits, -matches) per prefix pair,
    then a backtrace from the end preferring a match, a substitution, an unmatched hypothesis
    token, a skipped reference token (DESIGN.md: minimum edit distance, matches preferred)."""
    m, n = len(hypothesis), len(reference)
    cost = [[(j, 0) for j in range(n + 1)]] + [[(i, 0)] + [None] * n for i in range(1, m + 1)]
    for i in range(1, m + 1):
        for j in range(1, n + 1):
            same = hypothesis[i - 1] == reference[j - 1]
            e, neg = cost[i - 1][j - 1]
            cost[i][j] = min((e, neg - 1) if same else (e + 1, neg),
                             (cost[i - 1][j][0] + 1, cost[i - 1][j][1]),
                             (cost[i][j - 1][0] + 1, cost[i][j - 1][1]))
    correct = [False] * m
    i, j = m, n
    while i > 0 and j > 0:
        e, neg = cost[i - 1][j - 1]
        same = hypothesis[i - 1] == reference[j - 1]
        if same and cost[i][j] == (e, neg - 1):
            correct[i - 1] = True
            i, j = i - 1, j - 1
        elif not same and cost[i][j] == (e + 1, neg):
            i, j = i - 1, j - 1
        elif cost[i][j] == (cost[i - 1][j][0] + 1, cost[i - 1][j][1]):
            i -= 1
        else:
            j -= 1
    return correct


def numpy_ece(confidence, correct, n_bins=15):
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    edges = np.linspace(0, 1, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    return sum(abs(correct[index == b].sum() - confidence[index == b].sum())
               for b in range(n_bins)) / len(confidence)


# -- the library's entry points ------------------------------------------------------------------

def test_update_confidences_matches_numpy_binning_and_binary_scores():
    g = torch.Generator().manual_seed(0)
    confidence = torch.rand(3000, generator=g, dtype=torch.float64)
    correct = torch.rand(3000, generator=g, dtype=torch.float64) < confidence ** 1.5
    stats = CalibrationStats(15)
    for start in range(0, 3000, 700):  # streamed in batches
        stats.update_confidences(confidence[start:start + 700], correct[start:start + 700])
    p, c = confidence.numpy(), correct.numpy().astype(float)
    assert stats.count() == 3000
    assert stats.ece() == pytest.approx(numpy_ece(p, c), abs=1e-12)
    assert stats.accuracy() == pytest.approx(c.mean(), abs=1e-12)
    assert stats.confidence() == pytest.approx(p.mean(), abs=1e-12)
    assert stats.nll() == pytest.approx(-(c * np.log(p) + (1 - c) * np.log(1 - p)).mean(), rel=1e-12)
    assert stats.brier() == pytest.approx(((p - c) ** 2).mean(), rel=1e-12)


def test_update_confidences_bootstrap_matches_weighted_sums_by_hand():
    g = torch.Generator().manual_seed(1)
    confidence = torch.rand(400, generator=g, dtype=torch.float64)
    correct = torch.rand(400, generator=g, dtype=torch.float64) < confidence
    groups = torch.arange(400) // 9 + 1000
    stats = CalibrationStats(10, bootstrap=30, seed=5)
    stats.update_confidences(confidence, correct, groups=groups)
    weights = poisson_weights(5, torch.arange(1000, 1000 + 45), 30).numpy()  # 30 x groups
    per_token = weights[:, groups.numpy() - 1000]                           # 30 x tokens
    index = np.clip(np.searchsorted(np.linspace(0, 1, 11), confidence.numpy()) - 1, 0, 9)
    c = correct.numpy().astype(float)
    for r in (0, 7, 29):
        w = per_token[r]
        gaps = [abs((w * (c - confidence.numpy()))[index == b].sum()) for b in range(10)]
        assert stats.replicate_values("ece")[r].item() == pytest.approx(sum(gaps) / w.sum(), abs=1e-12)
    intervals = stats.bin_accuracy_intervals(0.9)
    for b in (0, 4, 9):
        inside = index == b
        ratios = (per_token[:, inside] * c[inside]).sum(1) / per_token[:, inside].sum(1)
        ratios = ratios[~np.isnan(ratios)]
        assert intervals[b] == pytest.approx(tuple(np.quantile(ratios, [0.05, 0.95])), abs=1e-12)


def test_bin_accuracy_interval_without_bootstrap_is_wilson():
    stats = CalibrationStats(2)
    stats.update_confidences(torch.tensor([0.8] * 10 + [0.2] * 3),
                             torch.tensor([True] * 8 + [False] * 2 + [False] * 3))
    low, high = stats.bin_accuracy_intervals()[1]
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # 8/10, textbook Wilson 95%
    low, high = stats.bin_accuracy_intervals()[0]
    assert low == 0.0 and high == pytest.approx(0.5615, abs=1e-4)    # 0/3


def test_update_confidences_refuses_bad_input():
    stats = CalibrationStats(15)
    with pytest.raises(ValueError, match=r"^correct: must hold one value per confidence \(3\), got 2"):
        stats.update_confidences(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"^confidence: must lie in \[0, 1\], got 1.5"):
        stats.update_confidences(torch.tensor([0.1, 1.5]), torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"^marginal: the marginal ECE needs every class"):
        CalibrationStats(15, marginal=True).update_confidences(torch.tensor([0.5]), torch.tensor([True]))
    with pytest.raises(ValueError, match=r"^groups: must hold one id per target position \(2\)"):
        stats.update_confidences(torch.tensor([0.1, 0.2]), torch.tensor([True, False]),
                                 groups=torch.tensor([1, 2, 3]))
    assert stats.count() == 0


def test_hypothesis_predictions_on_a_hand_made_batch():
    pad, eos = 1, 2
    hypotheses = [{"tokens": torch.tensor([5, 6, 7, eos]),
                   "positional_scores": torch.log(torch.tensor([0.9, 0.5, 0.25, 0.8]))},
                  {"tokens": torch.tensor([9, eos]),
                   "positional_scores": torch.log(torch.tensor([0.6, 0.7]))}]
    targets = torch.tensor([[5, 8, 7, eos], [4, 9, eos, pad]])
    confidence, correct, groups = hypothesis_predictions(hypotheses, targets, torch.tensor([12, 3]), pad)
    assert confidence.tolist() == pytest.approx([0.9, 0.5, 0.25, 0.8, 0.6, 0.7])
    assert correct.tolist() == [True, False, True, True, True, True]
    assert groups.tolist() == [12, 12, 12, 12, 3, 3]


# -- in fairseq ----------------------------------------------------------------------------------

def test_hypothesis_statistics_of_a_batch_equal_an_independent_computation(bible, ls_checkpoint):
    """Beam 3: the top hypothesis of each sentence, exp of its positional scores, aligned to the
    reference by the test's own dynamic programme."""
    from fairseq import checkpoint_utils

    from conftest import fairseq_setup, first_batch

    cfg, task, _ = fairseq_setup(bible / "bin", "--task", "translation_calibration")
    models, _ = checkpoint_utils.load_model_ensemble([str(ls_checkpoint)], task=task)
    cfg.generation.beam = 3
    cfg.generation.max_len_b = 25
    generator = task.build_generator(models, cfg.generation)
    sample = first_batch(task)
    hypos = task.inference_step(generator, models, sample)
    assert all(len(nbest) == 3 for nbest in hypos)

    pad = task.target_dictionary.pad()
    confidence, correct = [], []
    for i, nbest in enumerate(hypos):
        best = nbest[0]
        reference = [t for t in sample["target"][i].tolist() if t != pad]
        confidence += [math.exp(s) for s in best["positional_scores"].tolist()]
        correct += aligned_correct(best["tokens"].tolist(), reference)
    stats = task.calibration.hypothesis
    assert stats.count() == len(confidence) == sum(len(n[0]["tokens"]) for n in hypos)
    assert stats.accuracy() == pytest.approx(np.mean(correct), abs=1e-12)
    assert 0 < sum(correct) < len(correct)  # a trained model gets some tokens right
    assert stats.confidence() == pytest.approx(np.mean(confidence), abs=1e-6)
    assert stats.ece() == pytest.approx(numpy_ece(confidence, correct), abs=1e-6)
    assert task.calibration.sentences == set(sample["id"].tolist())


def lines(stdout, prefix):
    """``{sentence id: [fields of each line]}`` of the ``prefix-`` lines, in printed order."""
    result = {}
    for line in stdout.splitlines():
        if line.startswith(prefix + "-"):
            head, *fields = line.split("\t")
            result.setdefault(int(head[len(prefix) + 1:]), []).append(fields)
    return result


@pytest.fixture(scope="module")
def nbest_run(bible, ls_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("hyp")
    result = run([command("fairseq-generate"), bible / "bin", "--user-dir", "ls_plugins", "--path",
                  ls_checkpoint, *GEN, "--nbest", "2", "--calibration-json", out / "nbest.json",
                  "--calibration-plot", out / "nbest.png"])
    return result, json.loads((out / "nbest.json").read_text()), out


def test_generate_scores_the_top_hypothesis_of_each_sentence(nbest_run):
    """From fairseq-generate's own output (no --remove-bpe: H- lines are pieces): the first H-
    line of each sentence, its P- line (one base-2 log-probability per token, EOS included) and
    the T- line."""
    result, stats, out = nbest_run
    hyps, scores, refs = lines(result.stdout, "H"), lines(result.stdout, "P"), lines(result.stdout, "T")
    assert len(hyps) == 100 and all(len(h) == 2 for h in hyps.values())  # --nbest 2
    confidence, correct = [], []
    for sid, nbest in hyps.items():
        pieces = nbest[0][1].split() + ["</s>"]
        reference = refs[sid][0][0].replace("<<unk>>", "<unk>").split() + ["</s>"]
        p = [2.0 ** float(x) for x in scores[sid][0][0].split()]  # P- lines are base 2
        assert len(p) == len(pieces)
        confidence += p
        correct += aligned_correct(pieces, reference)
    hypothesis = stats["hypothesis"]
    assert hypothesis["count"] == len(confidence)
    assert hypothesis["accuracy"] == pytest.approx(np.mean(correct), abs=1e-12)
    assert hypothesis["confidence"] == pytest.approx(np.mean(confidence), abs=1e-4)  # P- rounds
    assert hypothesis["ece"] == pytest.approx(numpy_ece(confidence, correct), abs=2e-3)
    line = re.search(r"^Calibration \(hypothesis\) \| T 1.00 \| bins 15 equal-width \| sentences "
                     r"100/100 \| tokens (\d+) \| ECE ([0-9.]+) \[([0-9.]+), ([0-9.]+)\] \| MCE [0-9.]+ \| "
                     r"NLL \(binary\) [0-9.]+ \| Brier \(binary\) [0-9.]+ \| acc ([0-9.]+) \|",
                     result.stdout, re.M)
    assert line and int(line.group(1)) == hypothesis["count"]
    assert float(line.group(2)) == pytest.approx(hypothesis["ece"], abs=1e-4)
    assert [float(line.group(3)), float(line.group(4))] == pytest.approx(
        hypothesis["intervals"]["ece"], abs=1e-4)
    assert float(line.group(5)) == pytest.approx(hypothesis["accuracy"], abs=1e-4)
    assert stats["sentences"] == {"scored": 100, "total": 100}
    assert (out / "nbest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_remove_bpe_and_nbest_do_not_change_the_hypothesis_statistics(nbest_run, bible,
                                                                       ls_checkpoint, tmp_path):
    _, nbest, _ = nbest_run
    run([command("fairseq-generate"), bible / "bin", "--user-dir", "ls_plugins", "--path",
         ls_checkpoint, *GEN, "--remove-bpe", "sentencepiece", "--calibration-mode", "hypothesis",
         "--calibration-json", tmp_path / "one.json"])
    one = json.loads((tmp_path / "one.json").read_text())
    assert "count" not in one and one["mode"] == "hypothesis"
    for name in ("count", "ece", "accuracy", "confidence", "nll", "brier"):
        assert one["hypothesis"][name] == pytest.approx(nbest["hypothesis"][name], abs=1e-9), name
    # same seed, same sentences: the same bootstrap replicates, the same interval
    assert one["hypothesis"]["intervals"]["ece"] == pytest.approx(
        nbest["hypothesis"]["intervals"]["ece"], abs=1e-9)
