"""Bad input to ls-vision: one `ls-vision: error: ...` line, exit code 2, no traceback, no output.

Each kind of bad input runs once as a real command (subprocess); boundary variants run
in-process, where `parser.error` raises SystemExit(2)."""
import os
import subprocess
import sys

import pytest
import torch

from ls_plugins.vision import models, train


def write_checkpoint(path, num_classes):
    """A checkpoint in the trainer's format (what --teacher and --resume read)."""
    model = models.build_model("smallcnn", num_classes, 1, 8)
    torch.save({"model": "smallcnn", "num_classes": num_classes, "in_channels": 1, "image_size": 8,
                "dataset": "digits", "state_dict": model.state_dict(), "args": {}}, path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    (root / "garbage.pt").write_bytes(b"not a checkpoint")
    return {"good": write_checkpoint(root / "digits10.pt", 10),
            "wrong": write_checkpoint(root / "cifar100-like.pt", 100),
            "garbage": str(root / "garbage.pt")}


BAD_INPUTS = {
    "alpha above 1": (["--label-smoothing", "1.5"], "--label-smoothing: must be in [0, 1), got 1.5"),
    "beta above 1": (["--teacher", "{good}", "--distill-weight", "1.5"],
                     "--distill-weight: must be in [0, 1], got 1.5"),
    "temperature zero": (["--teacher", "{good}", "--distill-temperature", "0"],
                         "--distill-temperature: must be a finite number > 0, got 0.0"),
    "unknown model": (["--model", "vgg16"], "argument --model: invalid choice: 'vgg16'"),
    "unknown dataset": (["--dataset", "imagenet"], "argument --dataset: invalid choice: 'imagenet'"),
    "teacher with 100 classes": (["--teacher", "{wrong}"],
                                 "--teacher: the checkpoint's model predicts 100 classes, but "
                                 "--dataset digits has 10"),
    "teacher not a checkpoint": (["--teacher", "{garbage}"], "--teacher: cannot load"),
}


@pytest.fixture(scope="module")
def bad_runs(checkpoints, tmp_path_factory):
    """All bad commands, started together (each costs a Python + torch start-up)."""
    root = tmp_path_factory.mktemp("bad")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    processes = {}
    for name, (arguments, _) in BAD_INPUTS.items():
        output_dir = root / name.replace(" ", "_")
        command = [sys.executable, "-m", "ls_plugins.vision.train", "--quiet", "--epochs", "1",
                   "--output-dir", str(output_dir)] + [a.format(**checkpoints) for a in arguments]
        processes[name] = (output_dir, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                        stderr=subprocess.PIPE, text=True, env=env))
    results = {}
    for name, (output_dir, process) in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (output_dir, process.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_with_exit_code_2(bad_runs, name):
    output_dir, returncode, stdout, stderr = bad_runs[name]
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, stderr
    assert error_lines[0].startswith("ls-vision: error: ")
    assert BAD_INPUTS[name][1] in error_lines[0]
    assert not output_dir.exists()  # nothing half-written


@pytest.mark.parametrize("arguments, message", [
    (["--label-smoothing", "1"], "--label-smoothing: must be in [0, 1), got 1.0"),
    (["--label-smoothing", "-0.1"], "--label-smoothing: must be in [0, 1), got -0.1"),
    (["--label-smoothing", "nan"], "--label-smoothing: must be in [0, 1), got nan"),
    (["--teacher", "x.pt", "--distill-weight", "-0.5"], "--distill-weight: must be in [0, 1], got -0.5"),
    (["--teacher", "x.pt", "--distill-temperature", "-2"],
     "--distill-temperature: must be a finite number > 0, got -2.0"),
    (["--teacher", "x.pt", "--distill-temperature", "inf"],
     "--distill-temperature: must be a finite number > 0, got inf"),
    (["--distill-weight", "0.5"], "--distill-weight needs --teacher"),
    (["--epochs", "0"], "--epochs: must be >= 1, got 0"),
    (["--amp", "--device", "cpu"], "--amp needs --device cuda"),
    (["--test-only"], "--test-only needs --resume CKPT"),
    (["--resume", "/nonexistent/checkpoint.pt"], "--resume: no such file"),
    (["--teacher", "/nonexistent/teacher.pt"], "--teacher: no such file"),
    (["--calibration-bins", "0"], "--calibration-bins: must be an integer >= 1, got 0"),
])
def test_more_bad_input_in_process(arguments, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--output-dir", str(tmp_path / "run"), *arguments])
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten_without_resume(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"an earlier run")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "already holds a checkpoint; pass --resume" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"an earlier run"


def test_resume_with_another_model_is_refused(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--output-dir", str(tmp_path / "run"), "--model", "resnet20",
                    "--resume", checkpoints["good"]])
    assert exit_info.value.code == 2
    assert "--resume: the checkpoint holds a smallcnn, not --model resnet20" in capsys.readouterr().err


def test_resume_needs_training_state(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--output-dir", str(tmp_path / "run"), "--resume", checkpoints["good"]])
    assert exit_info.value.code == 2
    assert "--resume: the checkpoint holds a model but no training state" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_cifar_is_a_one_line_error_naming_data_dir(tmp_path, capsys, monkeypatch):
    import urllib.error

    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--dataset", "cifar10", "--model", "resnet20", "--data-dir", str(tmp_path / "cifar"),
                    "--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(error_lines) == 1
    assert error_lines[0].startswith("ls-vision: error: --data-dir: CIFAR-10 is not in")
    assert not (tmp_path / "run").exists()
