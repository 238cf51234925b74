"""fairseq-generate with --task translation_calibration --scoring calibration, end to end."""
import json
import math
import re

import pytest

from conftest import command, run

# fairseq drops a final batch smaller than --required-batch-size-multiple (default 8): use 1 so
# that every sentence of the subset is scored, as in fairseq-validate below.
GEN = ["--beam", "2", "--batch-size", "32", "--required-batch-size-multiple", "1", "--cpu",
       "--gen-subset", "valid",
       "--remove-bpe", "sentencepiece", "--max-len-b", "25", "--seed", "3"]
LINE = re.compile(r"^Calibration \| T ([0-9.]+) \| bins (\d+) \| tokens (\d+) \| ECE ([0-9.]+) \| "
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


@pytest.fixture(scope="module")
def scored(bible, ls_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    result = generate(bible, ls_checkpoint, "--calibration-json", out / "cal.json",
                      "--calibration-plot", out / "cal.png", "--calibration-fit-temperature",
                      "--calibration-adaptive")
    return result, out


def test_prints_line_and_writes_json_and_png(scored, bible):
    result, out = scored
    match = LINE.search(result.stdout)
    assert match, result.stdout[-2000:]
    stats = json.loads((out / "cal.json").read_text())
    assert float(match.group(1)) == 1.0 and int(match.group(2)) == 15
    # every non-pad reference token, EOS included: spm pieces + 1 per sentence
    pieces = (bible / "spm" / "valid.en").read_text().splitlines()
    assert stats["count"] == int(match.group(3)) == sum(len(p.split()) + 1 for p in pieces)
    assert stats["ece"] == pytest.approx(float(match.group(4)), abs=1e-4)
    assert sum(b["count"] for b in stats["bins"]) == stats["count"]
    assert stats["subset"] == "valid" and 0.1 < stats["fitted_temperature"] < 10
    assert 0.0 <= stats["adaptive_ece"] < 1.0
    assert (out / "cal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


def test_hypotheses_and_bleu_identical_with_scoring_on_and_off(scored, bible, ls_checkpoint):
    result, _ = scored
    plain = generate(bible, ls_checkpoint, calibrate=False)
    assert hypotheses(result.stdout) == hypotheses(plain.stdout)
    assert bleu_line(result.stdout) == bleu_line(plain.stdout)


def test_teacher_forced_nll_and_ece_equal_fairseq_validate(scored, bible, ls_checkpoint):
    _, out = scored
    stats = json.loads((out / "cal.json").read_text())
    validate = run([command("fairseq-validate"), bible / "bin", "--user-dir", "ls_plugins", "--task",
                    "translation", "--path", ls_checkpoint, "--valid-subset", "valid", "--cpu",
                    "--max-tokens", "3000", "--required-batch-size-multiple", "1"])
    text = validate.stdout + validate.stderr
    nll_base2 = float(re.search(r"valid on 'valid' subset \|.*?nll_loss ([0-9.]+)", text).group(1))
    assert stats["nll"] / math.log(2) == pytest.approx(nll_base2, abs=6e-4)  # validate rounds to 3
    for name in ("ece", "mce", "confidence", "brier"):
        logged = float(re.search(rf"valid on 'valid' subset \|.*?\| {name} ([0-9.e-]+)", text).group(1))
        assert stats[name] == pytest.approx(logged, abs=1e-5), name


def test_ensemble_of_identical_models_and_sampling(bible, ls_checkpoint, scored, tmp_path):
    result, out = scored
    single = json.loads((out / "cal.json").read_text())
    ensemble = generate(bible, ls_checkpoint, "--path", f"{ls_checkpoint}:{ls_checkpoint}",
                        "--calibration-json", tmp_path / "ens.json")
    doubled = json.loads((tmp_path / "ens.json").read_text())
    assert doubled["nll"] == pytest.approx(single["nll"], abs=1e-5)
    assert doubled["ece"] == pytest.approx(single["ece"], abs=1e-5)
    assert hypotheses(ensemble.stdout) == hypotheses(result.stdout)
    sampled = generate(bible, ls_checkpoint, "--sampling", "--beam", "1", "--temperature", "1.5",
                       "--calibration-json", tmp_path / "s.json")
    plain = generate(bible, ls_checkpoint, "--sampling", "--beam", "1", "--temperature", "1.5",
                     calibrate=False)
    assert hypotheses(sampled.stdout) == hypotheses(plain.stdout)
    hot = json.loads((tmp_path / "s.json").read_text())
    assert hot["temperature"] == 1.5 and hot["count"] == single["count"]
    assert hot["confidence"] < single["confidence"]  # a higher temperature flattens predictions


@pytest.mark.parametrize("option,value,message", [
    ("--calibration-bins", "0", "--calibration-bins"), ("--temperature", "0", "--temperature"),
    ("--temperature", "nan", "--temperature"), ("--temperature", "-1", "--temperature"),
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
    task.temperature = 1.7
    task.score_teacher_forced([model_a, model_b], sample)

    target, pad = sample["target"], task.target_dictionary.pad()
    with torch.no_grad():
        probs = sum(torch.softmax(m(**sample["net_input"])[0].double() / 1.7, -1)
                    for m in (model_a.eval(), model_b)) / 2
    keep = target.ne(pad)
    probs, kept = probs[keep], target[keep]
    reference = CalibrationStats(15)
    reference.update_probs(probs, kept)
    assert task.calibration.count() == int(keep.sum())
    assert task.calibration.nll() == pytest.approx(
        -probs.gather(1, kept[:, None]).log().mean().item(), rel=1e-5)
    assert task.calibration.ece() == pytest.approx(reference.ece(), abs=1e-5)
    assert task.calibration.accuracy() == (probs.argmax(1) == kept).double().mean().item()
