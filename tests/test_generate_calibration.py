"""fairseq-generate with --task translation_calibration --scoring calibration, end to end.

The hypothesis reading (generated tokens) has its own file, tests/test_hypothesis_calibration.py.
"""
import json
import math
import re

import pytest

from conftest import command, run

# Stock fairseq drops a final batch smaller than --required-batch-size-multiple (default 8):
# the comparisons with stock fairseq-generate use 1 on both sides; our own runs need not.
ALL = ["--required-batch-size-multiple", "1"]
GEN = ["--beam", "2", "--batch-size", "32", "--cpu", "--gen-subset", "valid",
       "--remove-bpe", "sentencepiece", "--max-len-b", "25", "--seed", "3"]
LINE = re.compile(r"^Calibration \(reference\) \| T ([0-9.]+) \| bins (\d+) equal-width \| "
                  r"sentences (\d+)/(\d+) \| tokens (\d+) \| ECE ([0-9.]+) \[([0-9.]+), ([0-9.]+)\] \| "
                  r"MCE ([0-9.]+) \| NLL ([0-9.]+)", re.M)


def generate(bible, checkpoint, *extra, calibrate=True, check=True):
    task = ["--task", "translation_calibration", "--scoring", "calibration"] if calibrate \
        else ["--scoring", "sacrebleu"]
    return run([command("fairseq-generate"), bible / "bin", "--user-dir", "ls_plugins", "--path",
                checkpoint, *GEN, *task, *extra], check=check)


def hypotheses(stdout):
    return sorted(line for line in stdout.splitlines() if line.startswith(("H-", "D-", "S-", "T-")))


def bleu_line(stdout):
    return re.search(r"^Generate valid with beam=\d+: (BLEU = .*)$", stdout, re.M).group(1)


def reference_pieces(bible):
    """Every non-pad reference token of the valid subset, EOS included: pieces + 1 a sentence."""
    pieces = (bible / "spm" / "valid.en").read_text().splitlines()
    return len(pieces), sum(len(p.split()) + 1 for p in pieces)


@pytest.fixture(scope="module")
def scored(bible, ls_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    result = generate(bible, ls_checkpoint, *ALL, "--calibration-json", out / "cal.json",
                      "--calibration-plot", out / "cal.png", "--calibration-fit-temperature",
                      "--calibration-adaptive", "--calibration-estimators", "debiased,marginal")
    return result, out


def test_prints_line_and_writes_json_and_png(scored, bible):
    result, out = scored
    match = LINE.search(result.stdout)
    assert match, result.stdout[-2000:]
    stats = json.loads((out / "cal.json").read_text())
    assert float(match.group(1)) == 1.0 and int(match.group(2)) == 15
    sentences, tokens = reference_pieces(bible)
    assert (int(match.group(3)), int(match.group(4))) == (sentences, sentences) == (100, 100)
    assert stats["sentences"] == {"scored": 100, "total": 100}
    assert stats["count"] == int(match.group(5)) == tokens
    assert stats["ece"] == pytest.approx(float(match.group(6)), abs=1e-4)
    # the interval: 200 replicates over sentences at the default level
    assert stats["bootstrap"] == 200 and stats["interval_level"] == 0.95
    low, high = stats["intervals"]["ece"]
    assert (low, high) == pytest.approx((float(match.group(7)), float(match.group(8))), abs=1e-4)
    assert low < stats["ece"] < high
    assert sum(b["count"] for b in stats["bins"]) == stats["count"]
    assert stats["subset"] == "valid" and 0.1 < stats["fitted_temperature"] < 10
    assert 0.0 <= stats["adaptive_ece"] < 1.0
    line = match.string[match.start():].splitlines()[0]
    assert f"debiased CE^2 {stats['debiased_ce2']:.4f} [" in line
    assert f"marginal ECE {stats['marginal_ece']:.4f}" in line
    assert f"adaptive ECE {stats['adaptive_ece']:.4f} (15 equal-mass bins)" in line
    assert line.endswith(f"NLL-optimal T {stats['fitted_temperature']:.3f}")
    filled = [b for b in stats["bins"] if b["count"]]
    assert all(b["accuracy_interval"][0] <= b["accuracy"] <= b["accuracy_interval"][1] for b in filled)
    assert stats["estimators"] == ["debiased", "marginal", "adaptive"]
    assert (out / "cal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_hypotheses_and_bleu_identical_with_scoring_on_and_off(scored, bible, ls_checkpoint):
    result, _ = scored
    plain = generate(bible, ls_checkpoint, *ALL, calibrate=False)
    assert hypotheses(result.stdout) == hypotheses(plain.stdout)
    assert bleu_line(result.stdout) == bleu_line(plain.stdout)


def test_every_sentence_counted_whatever_the_batch_size_multiple(scored, bible, ls_checkpoint,
                                                                  tmp_path):
    """100 valid sentences with fairseq's default --required-batch-size-multiple 8: stock fairseq
    drops a last batch of 4; our task scores all 100, in fairseq's batches plus that one."""
    _, out = scored
    every = json.loads((out / "cal.json").read_text())
    result = generate(bible, ls_checkpoint, "--calibration-mode", "reference",
                      "--calibration-bootstrap", "0", "--calibration-json", tmp_path / "m8.json")
    stats = json.loads((tmp_path / "m8.json").read_text())
    assert stats["sentences"] == {"scored": 100, "total": 100}
    assert re.search(r"^Calibration \(reference\) \|.*\| sentences 100/100 \| tokens "
                     rf"{reference_pieces(bible)[1]} \| ECE [0-9.]+ \| MCE", result.stdout, re.M)
    assert "Calibration (hypothesis)" not in result.stdout and "hypothesis" not in stats
    for name in ("count", "nll", "ece", "accuracy", "confidence"):
        assert stats[name] == pytest.approx(every[name], abs=1e-6), name
    assert re.search(r"Translated 100 sentences", result.stderr)


def test_teacher_forced_nll_and_ece_equal_fairseq_validate(scored, bible, ls_checkpoint):
    """fairseq-validate (the checkpoint's own task, translation, default batch size multiple 8)
    scores every sentence through our criterion, as our generate hook does."""
    _, out = scored
    stats = json.loads((out / "cal.json").read_text())
    validate = run([command("fairseq-validate"), bible / "bin", "--user-dir", "ls_plugins", "--task",
                    "translation", "--path", ls_checkpoint, "--valid-subset", "valid", "--cpu",
                    "--max-tokens", "3000"])
    text = validate.stdout + validate.stderr
    nll_base2 = float(re.search(r"valid on 'valid' subset \|.*?nll_loss ([0-9.]+)", text).group(1))
    assert stats["nll"] / math.log(2) == pytest.approx(nll_base2, abs=6e-4)  # validate rounds to 3
    for name in ("ece", "mce", "confidence", "brier"):
        logged = float(re.search(rf"valid on 'valid' subset \|.*?\| {name} ([0-9.e-]+)", text).group(1))
        assert stats[name] == pytest.approx(logged, abs=1e-5), name


def test_ensemble_of_identical_models_and_sampling(bible, ls_checkpoint, scored, tmp_path):
    result, out = scored
    single = json.loads((out / "cal.json").read_text())
    ensemble = generate(bible, ls_checkpoint, *ALL, "--path", f"{ls_checkpoint}:{ls_checkpoint}",
                        "--calibration-json", tmp_path / "ens.json")
    doubled = json.loads((tmp_path / "ens.json").read_text())
    for reading, other in ((doubled, single), (doubled["hypothesis"], single["hypothesis"])):
        assert reading["nll"] == pytest.approx(other["nll"], abs=1e-5)
        assert reading["ece"] == pytest.approx(other["ece"], abs=1e-5)
        assert reading["count"] == other["count"]
    assert hypotheses(ensemble.stdout) == hypotheses(result.stdout)
    sampled = generate(bible, ls_checkpoint, *ALL, "--sampling", "--beam", "1", "--temperature",
                       "1.5", "--calibration-json", tmp_path / "s.json")
    plain = generate(bible, ls_checkpoint, *ALL, "--sampling", "--beam", "1", "--temperature", "1.5",
                     calibrate=False)
    assert hypotheses(sampled.stdout) == hypotheses(plain.stdout)
    hot = json.loads((tmp_path / "s.json").read_text())
    assert hot["temperature"] == 1.5 and hot["count"] == single["count"]
    assert hot["confidence"] < single["confidence"]  # a higher temperature flattens predictions
    # every sampled token (EOS included) is scored: one positional score each
    sampled_tokens = sum(len(line.split("\t")[1].split()) for line in sampled.stdout.splitlines()
                         if line.startswith("P-"))
    assert hot["hypothesis"]["count"] == sampled_tokens


def test_streamed_temperature_fit_equals_the_exact_fit(scored, bible, ls_checkpoint):
    """The fit streams (TemperatureFit); the exact fit holds every token's logits."""
    import torch
    from fairseq import checkpoint_utils, tasks

    from conftest import fairseq_setup
    from ls_plugins.calibration import fit_temperature

    _, out = scored
    streamed = json.loads((out / "cal.json").read_text())["fitted_temperature"]
    cfg, _, _ = fairseq_setup(bible / "bin")
    task = tasks.setup_task(cfg.task)
    models, _ = checkpoint_utils.load_model_ensemble([str(ls_checkpoint)], task=task)
    model = models[0].eval()
    task.load_dataset("valid")
    itr = task.get_batch_iterator(dataset=task.dataset("valid"), max_tokens=4000,
                                  required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
    logits, targets = [], []
    with torch.no_grad():
        for sample in itr:
            keep = sample["target"].ne(task.target_dictionary.pad())
            logits.append(model(**sample["net_input"])[0][keep].double())
            targets.append(sample["target"][keep])
    assert sum(t.numel() for t in targets) == reference_pieces(bible)[1]
    exact = fit_temperature(torch.cat(logits), torch.cat(targets))
    assert streamed == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize("option,value,message", [
    ("--calibration-bins", "0", "--calibration-bins: must be an integer >= 1, got 0"),
    ("--temperature", "0", "--temperature"),
    ("--temperature", "nan", "--temperature"), ("--temperature", "-1", "--temperature"),
    ("--calibration-mode", "x", "--calibration-mode: must be one of reference, hypothesis, both, "
                                "got 'x'"),
    ("--calibration-bootstrap", "-1", "--calibration-bootstrap: must be an integer >= 0, got -1"),
    ("--calibration-bootstrap", "many", "--calibration-bootstrap: must be an integer >= 0, got 'many'"),
    ("--calibration-seed", "-2", "--calibration-seed: must be an integer >= 0, got -2"),
    ("--calibration-level", "1", "--calibration-level: must be in (0, 1), got 1.0"),
    ("--calibration-level", "0", "--calibration-level: must be in (0, 1), got 0.0"),
    ("--calibration-level", "nan", "--calibration-level: must be in (0, 1), got nan"),
    ("--calibration-estimators", "debiased,fancy",
     "--calibration-estimators: must be a comma-separated list of debiased, marginal, adaptive, "
     "got 'fancy'"),
    ("--calibration-json", "/nonexistent/dir/cal.json", "--calibration-json"),
    ("--calibration-plot", "README.md/cal.png", "--calibration-plot"),
    # as root os.access says /proc is writable; only a real write finds out, before decoding
    ("--calibration-plot", "/proc/cal.png", "--calibration-plot"),
    ("--calibration-json", "/proc/cal.json", "--calibration-json"),
    ("--calibration-json", "tests", "--calibration-json")])
def test_bad_input_one_line_error(bible, ls_checkpoint, option, value, message):
    result = generate(bible, ls_checkpoint, option, value, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr
    assert errors[0].startswith("fairseq-generate: error: ")


def test_unwritable_output_refused_at_task_setup_when_not_from_the_command_line(bible, capsys):
    """A hydra config or a program sets the outputs without the command line's checks: the task
    tries the write when it is set up, before loading anything."""
    from fairseq import tasks

    from conftest import fairseq_setup

    cfg, _, _ = fairseq_setup(bible / "bin", "--task", "translation_calibration")
    capsys.readouterr()
    for option, key in (("--calibration-plot", "calibration_plot"),
                        ("--calibration-json", "calibration_json")):
        cfg.task[key] = "/proc/cal.out"
        with pytest.raises(SystemExit) as exit_info:
            tasks.setup_task(cfg.task)
        cfg.task[key] = None
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and f"error: {option}: must name a writable file" in err[0], err
    for key, value, message in (("calibration_mode", "x", "--calibration-mode: must be one of"),
                                ("calibration_bootstrap", -1, "--calibration-bootstrap: must be"),
                                ("calibration_level", 2.0, "--calibration-level: must be in (0, 1)"),
                                ("calibration_estimators", "x", "--calibration-estimators: must")):
        saved = cfg.task[key]
        cfg.task[key] = value
        with pytest.raises(SystemExit) as exit_info:
            tasks.setup_task(cfg.task)
        cfg.task[key] = saved
        err = capsys.readouterr().err.splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_scorer_without_task_is_refused(bible, ls_checkpoint):
    result = run([command("fairseq-generate"), bible / "bin", "--user-dir", "ls_plugins", "--path",
                  ls_checkpoint, *GEN, "--scoring", "calibration"], check=False)
    assert result.returncode == 2 and "--task translation_calibration" in result.stderr


def test_ensemble_of_two_different_models_averages_probabilities(bible):
    """The hook's ensemble: mean of the models' tempered softmaxes, scored per non-pad token."""
    import torch

    from conftest import fairseq_setup, first_batch
    from ls_plugins.calibration import CalibrationStats

    cfg, task, model_a = fairseq_setup(bible / "bin", "--task", "translation_calibration")
    torch.manual_seed(2)
    model_b = task.build_model(cfg.model).eval()
    sample = first_batch(task)
    task.calibration.add_reference([model_a, model_b], sample, 1.7, task.target_dictionary.pad())

    target, pad = sample["target"], task.target_dictionary.pad()
    with torch.no_grad():
        probs = sum(torch.softmax(m(**sample["net_input"])[0].double() / 1.7, -1)
                    for m in (model_a.eval(), model_b)) / 2
    keep = target.ne(pad)
    probs, kept = probs[keep], target[keep]
    reference = CalibrationStats(15)
    reference.update_probs(probs, kept)
    stats = task.calibration.reference
    assert stats.count() == int(keep.sum())
    assert stats.nll() == pytest.approx(-probs.gather(1, kept[:, None]).log().mean().item(), rel=1e-5)
    assert stats.ece() == pytest.approx(reference.ece(), abs=1e-5)
    assert stats.accuracy() == (probs.argmax(1) == kept).double().mean().item()


def test_teacher_forced_pass_reuses_the_encoder_output_of_beam_search(bible):
    """The decoders alone on beam search's captured encoder outputs give the statistics of a
    full forward pass (and the encoder runs once per batch, in beam search)."""
    import torch

    from conftest import fairseq_setup, first_batch
    from ls_plugins.calibration import CalibrationStats

    cfg, task, model = fairseq_setup(bible / "bin", "--task", "translation_calibration")
    model.eval()
    cfg.generation.beam = 2
    generator = task.build_generator([model], cfg.generation)
    sample = first_batch(task)
    calls, forward = [], model.encoder.forward

    def counted(*args, **kwargs):  # beam search calls forward directly, not through hooks
        calls.append(1)
        return forward(*args, **kwargs)
    model.encoder.forward = counted
    task.inference_step(generator, [model], sample)
    assert len(calls) == 1  # beam search's encoder pass only

    pad = task.target_dictionary.pad()
    with torch.no_grad():
        logits = model(**sample["net_input"])[0]
    full = CalibrationStats(15, bootstrap=200, seed=0)  # the task's defaults
    full.update(logits, sample["target"], ignore_index=pad,
                groups=sample["id"][:, None].expand_as(sample["target"]))
    reused = task.calibration.reference
    assert reused.count() == full.count()
    assert reused.nll() == pytest.approx(full.nll(), rel=1e-6)
    assert torch.allclose(reused.conf_sums, full.conf_sums, rtol=1e-6)
    assert torch.equal(reused.counts, full.counts) and torch.equal(reused.correct_sums, full.correct_sums)
    assert torch.allclose(reused.replicate_sums[:, :15], full.replicate_sums[:, :15])


def test_every_example_batches_are_fairseqs_plus_the_dropped_remainder(bible):
    """fairseq's batches unchanged, then the examples it drops; training batches untouched."""
    import numpy as np

    from conftest import fairseq_setup
    from ls_plugins.tasks.batching import EveryExampleDataset, keep_every_example

    _, task, _ = fairseq_setup(bible / "bin")  # the stock translation task
    task.load_dataset("valid")
    dataset = task.dataset("valid")
    indices = dataset.ordered_indices()
    stock = dataset.batch_by_size(indices, max_sentences=32, required_batch_size_multiple=8)
    ours = EveryExampleDataset(dataset).batch_by_size(indices, max_sentences=32,
                                                      required_batch_size_multiple=8)
    assert sum(len(b) for b in stock) == 96  # fairseq drops a last batch of 4
    assert [b.tolist() for b in ours[:len(stock)]] == [b.tolist() for b in stock]
    assert sorted(np.concatenate(ours).tolist()) == list(range(100))

    keep_every_example(task)

    def batched(**kwargs):
        itr = task.get_batch_iterator(dataset=dataset, max_sentences=32, disable_iterator_cache=True,
                                      required_batch_size_multiple=8, **kwargs)
        return sum(len(b) for b in itr.frozen_batches)
    assert batched() == 100
    assert batched(update_epoch_batch_itr=False) == 96  # fairseq's training iterator
