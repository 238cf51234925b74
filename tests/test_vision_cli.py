"""Bad input to ls-vision and `ls-vision plot`: exactly one `ls-vision: error: <option>: ...` line
on stderr, exit code 2, no traceback, nothing written.

A few kinds run as the real command (subprocesses, started together); the table runs in-process,
where the parser's error raises SystemExit(2)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from ls_plugins.vision import command_line, data, models, train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_checkpoint(path, num_classes):
    """A model-only checkpoint in the trainer's format (what --teacher reads)."""
    model = models.build_model("smallcnn", num_classes, 1, 8)
    torch.save({"model": "smallcnn", "num_classes": num_classes, "in_channels": 1, "image_size": 8,
                "dataset": "digits", "state_dict": model.state_dict(), "args": {}}, path)
    return str(path)


class RunsCode:
    """Unpickling calls ``function(*arguments)``: a checkpoint that wants to run code."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints good and bad, and a finished 2-epoch digits run to resume."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "garbage.pt").write_bytes(os.urandom(256))
    torch.save(torch.zeros(3), root / "tensor.pt")
    (root / "a_file").write_text("not a directory")
    (root / "a_dir").mkdir()
    pwned = root / "pwned"
    torch.save({"model": RunsCode(os.system, f"touch {pwned}")}, root / "system.pt")
    torch.save({"model": RunsCode(open, str(pwned), "w")}, root / "open.pt")
    run_dir = root / "finished"
    train.main(["--dataset", "digits", "--epochs", "2", "--lr", "0.02", "--label-smoothing", "0.1",
                "--quiet", "--output-dir", str(run_dir)])
    unfinished = root / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.json").write_text(json.dumps({"args": {}, "history": []}))
    (root / "bad_json").mkdir()
    (root / "bad_json" / "metrics.json").write_text("{not json")
    return {"root": root, "good": write_checkpoint(root / "digits10.pt", 10),
            "wrong": write_checkpoint(root / "cifar100-like.pt", 100),
            "garbage": str(root / "garbage.pt"), "tensor": str(root / "tensor.pt"),
            "system": str(root / "system.pt"), "open": str(root / "open.pt"), "pwned": str(pwned),
            "file": str(root / "a_file"), "dir": str(root / "a_dir"), "run": str(run_dir),
            "ckpt": str(run_dir / "checkpoint.pt"), "unfinished": str(unfinished),
            "bad_json": str(root / "bad_json")}


def snapshot(*roots):
    """Every file under ``roots`` with its size and modification time."""
    return {os.path.join(d, f): (os.stat(os.path.join(d, f)).st_size, os.stat(os.path.join(d, f)).st_mtime_ns)
            for root in roots for d, _, names in os.walk(root) for f in names}


def run_refused(argv, tmp_path, capsys, files, code=2):
    """Run ``train.main(argv)``; assert exit ``code``, exactly one stderr line, nothing written.
    Returns the line."""
    before = snapshot(tmp_path, files["root"])
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == code, captured.err
    assert len(captured.err.splitlines()) == 1 and captured.err.endswith("\n"), captured.err
    assert "Traceback" not in captured.err
    assert snapshot(tmp_path, files["root"]) == before  # nothing written, nothing touched
    return captured.err.rstrip("\n")


NO_CUDA = not torch.cuda.is_available()

# (arguments, the line after "ls-vision: error: ") -- {name} are the files of the fixture.
BAD_INPUT = {
    # out of range
    "alpha 1": (["--label-smoothing", "1"], "--label-smoothing: must be in [0, 1), got 1.0"),
    "alpha negative": (["--label-smoothing", "-0.1"], "--label-smoothing: must be in [0, 1), got -0.1"),
    "lr zero": (["--lr", "0"], "--lr: must be a finite number > 0, got 0.0"),
    "lr negative": (["--lr", "-0.1"], "--lr: must be a finite number > 0, got -0.1"),
    "momentum 1": (["--momentum", "1"], "--momentum: must be in [0, 1), got 1.0"),
    "wd negative": (["--wd=-1e-4"], "--wd: must be a finite number >= 0, got -0.0001"),
    "weight-decay alias negative": (["--weight-decay", "-1"], "--wd: must be a finite number >= 0, got -1.0"),
    "lr-gamma negative": (["--lr-scheduler", "step", "--lr-gamma", "-1"], "--lr-gamma: must be in (0, 1], got -1.0"),
    "lr-gamma zero": (["--lr-scheduler", "step", "--lr-gamma", "0"], "--lr-gamma: must be in (0, 1], got 0.0"),
    "lr-gamma above 1": (["--lr-scheduler", "step", "--lr-gamma", "2"], "--lr-gamma: must be in (0, 1], got 2.0"),
    "epochs 0": (["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
    "batch size 0": (["--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    "-b 0": (["-b", "0"], "--batch-size: must be an integer >= 1, got 0"),
    "eval batch size 0": (["--eval-batch-size", "0"], "--eval-batch-size: must be an integer >= 1, got 0"),
    "workers negative": (["--workers", "-1"], "--workers: must be an integer >= 0, got -1"),
    "bins 0": (["--calibration-bins", "0"], "--calibration-bins: must be an integer >= 1, got 0"),
    "bootstrap negative": (["--calibration-bootstrap", "-1"],
                           "--calibration-bootstrap: must be an integer >= 0, got -1"),
    "bootstrap not an integer": (["--calibration-bootstrap", "1.5"],
                                 "--calibration-bootstrap: must be an integer >= 0, got 1.5"),
    "calibration seed negative": (["--calibration-seed", "-1"], "--calibration-seed: must be an integer >= 0, got -1"),
    "calibration seed a word": (["--calibration-seed", "abc"], "--calibration-seed: must be an integer >= 0, got 'abc'"),
    "seed negative": (["--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
    "val-size 0": (["--val-size", "0"], "--val-size: must be an integer >= 1, got 0"),
    "val-size all of cifar": (["--dataset", "cifar10", "--model", "resnet20", "--val-size", "50000"],
                              "--val-size: must be < 50000, the training images of cifar10, got 50000"),
    "val-size with digits": (["--val-size", "100"], "--val-size: only for fashion-mnist, cifar10, cifar100 (--dataset "
                                                    "digits has a fixed split), got 100"),
    "milestone 0": (["--lr-scheduler", "step", "--lr-milestones", "0"],
                    "--lr-milestones: must be an integer >= 1, got 0"),
    "milestone at the last epoch": (["--epochs", "5", "--lr-scheduler", "step", "--lr-milestones", "2", "5"],
                                    "--lr-milestones: must be < --epochs 5, got 2 5"),
    "milestones decreasing": (["--lr-scheduler", "step", "--lr-milestones", "3", "2"],
                              "--lr-milestones: must increase, got 3 2"),
    "milestones repeated": (["--lr-scheduler", "step", "--lr-milestones", "2", "2"],
                            "--lr-milestones: must increase, got 2 2"),
    "milestones with cosine": (["--lr-milestones", "2"], "--lr-milestones: only with --lr-scheduler step, got 2"),
    "lr-gamma with cosine": (["--lr-gamma", "0.5"], "--lr-gamma: only with --lr-scheduler step, got 0.5"),
    "beta above 1": (["--teacher", "{good}", "--distill-weight", "1.5"], "--distill-weight: must be in [0, 1], got 1.5"),
    "beta negative": (["--teacher", "{good}", "--distill-weight", "-0.5"], "--distill-weight: must be in [0, 1], got -0.5"),
    "temperature 0": (["--teacher", "{good}", "--distill-temperature", "0"],
                      "--distill-temperature: must be a finite number > 0, got 0.0"),
    "temperature negative": (["--teacher", "{good}", "--distill-temperature", "-2"],
                             "--distill-temperature: must be a finite number > 0, got -2.0"),
    # nan and inf
    "alpha nan": (["--label-smoothing", "nan"], "--label-smoothing: must be in [0, 1), got nan"),
    "lr nan": (["--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
    "lr inf": (["--lr", "inf"], "--lr: must be a finite number > 0, got inf"),
    "momentum nan": (["--momentum", "nan"], "--momentum: must be in [0, 1), got nan"),
    "wd nan": (["--wd", "nan"], "--wd: must be a finite number >= 0, got nan"),
    "wd inf": (["--wd", "inf"], "--wd: must be a finite number >= 0, got inf"),
    "lr-gamma nan": (["--lr-scheduler", "step", "--lr-gamma", "nan"], "--lr-gamma: must be in (0, 1], got nan"),
    "beta nan": (["--teacher", "{good}", "--distill-weight", "nan"], "--distill-weight: must be in [0, 1], got nan"),
    "temperature inf": (["--teacher", "{good}", "--distill-temperature", "inf"],
                        "--distill-temperature: must be a finite number > 0, got inf"),
    "epochs nan": (["--epochs", "nan"], "--epochs: must be an integer >= 1, got nan"),
    "batch size inf": (["--batch-size", "inf"], "--batch-size: must be an integer >= 1, got inf"),
    # wrong type
    "epochs a word": (["--epochs", "ten"], "--epochs: must be an integer >= 1, got 'ten'"),
    "epochs a fraction": (["--epochs", "1.5"], "--epochs: must be an integer >= 1, got 1.5"),
    "lr a word": (["--lr", "fast"], "--lr: must be a number, got 'fast'"),
    "milestone a word": (["--lr-scheduler", "step", "--lr-milestones", "x"],
                         "--lr-milestones: must be an integer >= 1, got 'x'"),
    "option without its value": (["--lr"], "--lr: expected one argument"),
    "unknown option": (["--learning-rate", "0.1"], "unrecognized arguments: --learning-rate 0.1"),
    # unknown choices
    "unknown model": (["--model", "vgg16"], "--model: must be one of resnet20, resnet32, resnet56, "
                                            "resnet110, alexnet, smallcnn, mlp, got 'vgg16'"),
    "unknown dataset": (["--dataset", "imagenet"], "--dataset: must be one of"),
    "unknown scheduler": (["--lr-scheduler", "linear"], "--lr-scheduler: must be one of step, cosine, got 'linear'"),
    "unknown device": (["--device", "tpu"], "--device: must be one of cpu, cuda, got 'tpu'"),
    "unknown optimizer": (["--optimizer", "rmsprop"], "--optimizer: must be one of sgd, adam, got 'rmsprop'"),
    # options of one optimizer or model only
    "momentum with adam": (["--optimizer", "adam", "--momentum", "0.9"], "--momentum: only with --optimizer sgd, got 0.9"),
    "nesterov with adam": (["--optimizer", "adam", "--nesterov"], "--nesterov: needs --optimizer sgd and --momentum > 0"),
    "mlp width with a cnn": (["--model", "smallcnn", "--mlp-width", "64"], "--mlp-width: only with --model mlp, got 64"),
    "mlp depth 0": (["--model", "mlp", "--mlp-depth", "0"], "--mlp-depth: must be an integer >= 1, got 0"),
    "mlp width a fraction": (["--model", "mlp", "--mlp-width", "0.5"], "--mlp-width: must be an integer >= 1, got 0.5"),
    "mlp dropout 1": (["--model", "mlp", "--mlp-dropout", "1"], "--mlp-dropout: must be in [0, 1), got 1.0"),
    "mlp dropout nan": (["--model", "mlp", "--mlp-dropout", "nan"], "--mlp-dropout: must be in [0, 1), got nan"),
    "val-size all of fashion-mnist": (["--dataset", "fashion-mnist", "--val-size", "60000"],
                                      "--val-size: must be < 60000, the training images of fashion-mnist, got 60000"),
    # data that is not there
    "data: fashion-mnist missing": (["--dataset", "fashion-mnist", "--model", "mlp", "--data-dir", "/nonexistent/fm"],
                                    "--data-dir: must be a directory holding Fashion-MNIST's idx files"),
    "data: fashion-mnist dir a file": (["--dataset", "fashion-mnist", "--model", "mlp", "--data-dir", "{file}"],
                                       "--data-dir: must be a directory holding Fashion-MNIST's idx files"),
    # empty lists
    "milestones empty": (["--lr-scheduler", "step", "--lr-milestones"], "--lr-milestones: expected at least one argument"),
    # missing files, directories instead of files, random bytes, not a checkpoint
    "resume missing": (["--resume", "/nonexistent/checkpoint.pt"],
                       "--resume: must name an existing file, got /nonexistent/checkpoint.pt (no such file)"),
    "teacher missing": (["--teacher", "/nonexistent/teacher.pt"], "--teacher: must name an existing file"),
    "resume a directory": (["--resume", "{dir}"], "--resume: must name a file, got {dir} (a directory)"),
    "teacher a directory": (["--teacher", "{dir}"], "--teacher: must name a file, got {dir} (a directory)"),
    "resume random bytes": (["--resume", "{garbage}"], "--resume: must name an ls-vision checkpoint, got {garbage} ("),
    "teacher random bytes": (["--teacher", "{garbage}"], "--teacher: must name an ls-vision checkpoint, got {garbage} ("),
    "teacher a tensor": (["--teacher", "{tensor}"], "--teacher: must name an ls-vision checkpoint, got {tensor} "
                                                    "(no model, num_classes, in_channels, image_size, state_dict in it)"),
    # unwritable output
    "output dir is a file": (["--output-dir", "{file}"], "--output-dir: must name a directory, got {file} (an existing file)"),
    "output dir below a file": (["--output-dir", "{file}/run"], "--output-dir: must name a directory, got {file}/run"),
    "output dir holds a run": (["--output-dir", "{run}"], "--output-dir: must not hold a checkpoint unless --resume "
                                                         "{run}/checkpoint.pt continues it, got {run}"),
    "test-only into the run's directory": (["--resume", "{ckpt}", "--test-only", "--output-dir", "{run}"],
                                           "--output-dir: must differ from the --resume checkpoint's directory"),
    # class count and image shape mismatch between checkpoint and data set
    "teacher with 100 classes": (["--teacher", "{wrong}"], "--teacher: the checkpoint's model predicts 100 "
                                                           "classes, but --dataset digits has 10"),
    "teacher for other images": (["--teacher", "{good}", "--dataset", "synthetic"],
                                 "--teacher: the checkpoint's model takes 1x8x8 images, --dataset synthetic has 3x32x32"),
    # options that need others
    "beta without teacher": (["--distill-weight", "0.5"], "--distill-weight: only with --teacher, got 0.5"),
    "temperature without teacher": (["--distill-temperature", "2"], "--distill-temperature: only with --teacher, got 2.0"),
    "test-only without resume": (["--test-only"], "--test-only: needs --resume CKPT"),
    "amp on cpu": (["--amp", "--device", "cpu"], "--amp: needs --device cuda, got --device cpu"),
    "nesterov without momentum": (["--nesterov", "--momentum", "0"],
                                  "--nesterov: needs --optimizer sgd and --momentum > 0, got --optimizer sgd --momentum 0.0"),
    "resume a model-only checkpoint": (["--resume", "{good}"], "--resume: the checkpoint holds a model but no training state"),
    # --resume keeps the run's options
    "resume with more epochs": (["--resume", "{ckpt}", "--epochs", "20"],
                                "--epochs: must equal the checkpoint's 2 when resuming, got 20"),
    "resume with another lr": (["--resume", "{ckpt}", "--lr", "0.05"], "--lr: must equal the checkpoint's 0.02 when resuming, got 0.05"),
    "resume with another alpha": (["--resume", "{ckpt}", "--label-smoothing", "0"],
                                  "--label-smoothing: must equal the checkpoint's 0.1 when resuming, got 0.0"),
    "resume with another schedule": (["--resume", "{ckpt}", "--lr-scheduler", "step"],
                                     "--lr-scheduler: must equal the checkpoint's cosine when resuming, got step"),
    "resume with another momentum": (["--resume", "{ckpt}", "--momentum", "0.5"],
                                     "--momentum: must equal the checkpoint's 0.9 when resuming, got 0.5"),
    "resume with another wd": (["--resume", "{ckpt}", "--wd", "0"], "--wd: must equal the checkpoint's 0.0005 when resuming, got 0.0"),
    "resume with another model": (["--resume", "{ckpt}", "--model", "resnet20"],
                                  "--model: must equal the checkpoint's smallcnn when resuming, got resnet20"),
    "resume without augmentation": (["--resume", "{ckpt}", "--no-augment"],
                                    "--augment: must equal the checkpoint's True when resuming, got False"),
    "resume with a teacher": (["--resume", "{ckpt}", "--teacher", "{good}"],
                              "--teacher: must equal the checkpoint's none when resuming, got {good}"),
    "test-only with another alpha": (["--resume", "{ckpt}", "--test-only", "--label-smoothing", "0.2"],
                                     "--label-smoothing: must equal the checkpoint's 0.1 when resuming, got 0.2"),
    "resume with another bootstrap": (["--resume", "{ckpt}", "--calibration-bootstrap", "50"],
                                      "--calibration-bootstrap: must equal the checkpoint's 200 when resuming, got 50"),
    "resume with another calibration seed": (["--resume", "{ckpt}", "--calibration-seed", "1"],
                                             "--calibration-seed: must equal the checkpoint's 0 when resuming, got 1"),
    # --match-gamma (distillation at equal gamma)
    "gamma 0": (["--teacher", "{good}", "--match-gamma", "0"], "--match-gamma: must be in (0, 1), got 0.0"),
    "gamma 1": (["--teacher", "{good}", "--match-gamma", "1"], "--match-gamma: must be in (0, 1), got 1.0"),
    "gamma negative": (["--teacher", "{good}", "--match-gamma", "-0.1"], "--match-gamma: must be in (0, 1), got -0.1"),
    "gamma nan": (["--teacher", "{good}", "--match-gamma", "nan"], "--match-gamma: must be in (0, 1), got nan"),
    "gamma a word": (["--teacher", "{good}", "--match-gamma", "high"], "--match-gamma: must be a number, got 'high'"),
    "gamma without teacher": (["--match-gamma", "0.1"], "--match-gamma: only with --teacher, got 0.1"),
    "gamma with a temperature": (["--teacher", "{good}", "--match-gamma", "0.1", "--distill-temperature", "2"],
                                 "--match-gamma: cannot be combined with --distill-temperature (it finds the "
                                 "temperature), got --match-gamma 0.1 --distill-temperature 2.0"),
    "gamma with a temperature, no teacher": (["--distill-temperature", "2", "--match-gamma", "0.1"],
                                             "--match-gamma: cannot be combined with --distill-temperature"),
    # the mutual information probe
    "mi-every 0": (["--mi-every", "0"], "--mi-every: must be an integer >= 1, got 0"),
    "mi examples 1": (["--mi-every", "1", "--mi-examples", "1"], "--mi-examples: must be an integer >= 2, got 1"),
    "mi augmentations 1": (["--mi-every", "1", "--mi-augmentations", "1"],
                           "--mi-augmentations: must be an integer >= 2, got 1"),
    "mi classes the same": (["--mi-every", "1", "--mi-classes", "3,3"],
                            "--mi-classes: must be exactly 2 distinct class indices, got [3, 3]"),
    "mi class out of range": (["--mi-every", "1", "--mi-classes", "0,10"],
                              "--mi-classes: class indices must lie in [0, 10), got [0, 10]"),
    "mi class out of cifar100's range": (["--dataset", "cifar100", "--model", "resnet20", "--mi-every", "1",
                                          "--mi-classes", "0,100"],
                                         "--mi-classes: class indices must lie in [0, 100), got [0, 100]"),
    "mi three classes": (["--mi-every", "1", "--mi-classes", "0,1,2"],
                         "--mi-classes: must be two class indices separated by a comma, e.g. 0,6, got '0,1,2'"),
    "mi classes words": (["--mi-every", "1", "--mi-classes", "shirt,coat"],
                         "--mi-classes: must be two class indices separated by a comma, e.g. 0,6, got 'shirt,coat'"),
    "mi classes without mi-every": (["--mi-classes", "0,6"], "--mi-classes: only with --mi-every, got 0 6"),
    "mi examples without mi-every": (["--mi-examples", "100"], "--mi-examples: only with --mi-every, got 100"),
    "mi-every without augmentation": (["--mi-every", "1", "--no-augment"],
                                      "--mi-every: needs the random training augmentation (the estimate's source "
                                      "of randomness), got --no-augment"),
    "resume with another probe": (["--resume", "{ckpt}", "--mi-every", "1"],
                                  "--mi-every: must equal the checkpoint's none when resuming, got 1"),
    "data: mi examples beyond the digits": (["--mi-every", "1", "--mi-classes", "3,8"],
                                            "--mi-examples: must be at most "),
}
if NO_CUDA:
    BAD_INPUT["cuda without a GPU"] = (["--device", "cuda"], "--device: cpu (no CUDA device is available), got cuda")


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_table(name, files, tmp_path, capsys, monkeypatch):
    arguments, message = BAD_INPUT[name]
    arguments = [a.format(**files) for a in arguments]
    if "--output-dir" not in arguments:
        arguments += ["--output-dir", str(tmp_path / "run")]
    if not name.startswith(("teacher with", "teacher for", "data:")):  # checked before the data is loaded
        monkeypatch.setattr(data, "build_splits", None)
    line = run_refused(["--quiet", *arguments], tmp_path, capsys, files)
    assert line.startswith("ls-vision: error: " + message.format(**files)), line


def test_untrusted_checkpoint_is_refused_in_one_line_naming_the_global(files, tmp_path, capsys):
    """A pickle that calls os.system or open while loading: one line naming the global, saying
    it is not an ls-vision checkpoint and wants to run code; the file it would create is not
    created and nothing suggests allowlisting it."""
    for option in ("--resume", "--teacher"):
        for key, name in (("system", "posix.system"), ("open", "io.open")):
            line = run_refused([option, files[key], "--output-dir", str(tmp_path / "run")],
                               tmp_path, capsys, files)
            assert line.startswith(f"ls-vision: error: {option}: must name an ls-vision checkpoint, "
                                   f"got {files[key]} ("), line
            assert f" {name}," in line or f" {name} " in line, line
            assert "run code" in line and "add_safe_globals" not in line and "\x1b" not in line, line
            assert not os.path.exists(files["pwned"])


def test_output_dir_naming_a_file_is_refused_before_loading(files, tmp_path, capsys, monkeypatch):
    """Before: the data and model were loaded, then os.makedirs raised a traceback."""
    monkeypatch.setattr(data, "build_splits", None)
    monkeypatch.setattr(models, "build_model", None)
    line = run_refused(["--output-dir", files["file"]], tmp_path, capsys, files)
    assert line == f"ls-vision: error: --output-dir: must name a directory, got {files['file']} (an existing file)"


PLOT_BAD_INPUT = {
    "nothing": ([], "ls-vision plot: error: the following arguments are required: RUN_DIR, --out"),
    "no --out": (["{run}"], "ls-vision plot: error: the following arguments are required: --out"),
    "missing run": (["/nonexistent/run", "--out", "{out}"],
                    "ls-vision plot: error: RUN_DIR: must be an ls-vision output directory holding a finished "
                    "run's metrics.json, got /nonexistent/run ([Errno 2] No such file or directory"),
    "unfinished run": (["{unfinished}", "--out", "{out}"], "ls-vision plot: error: RUN_DIR: must be an ls-vision "
                       "output directory holding a finished run's metrics.json, got {unfinished} (no final metrics"),
    "not json": (["{bad_json}", "--out", "{out}"], "ls-vision plot: error: RUN_DIR: must be an ls-vision output "
                 "directory holding a finished run's metrics.json, got {bad_json} (Expecting property name"),
    "out a directory": (["{run}", "--out", "{dir}"], "ls-vision plot: error: --out: must name a file, got {dir} (a directory)"),
    "out below a file": (["{run}", "--out", "{file}/fig.png"], "ls-vision plot: error: --out: must name a file in a "
                         "directory that can be written or created, got {file}/fig.png"),
    "unknown option": (["{run}", "--out", "{out}", "--dpi", "300"], "ls-vision plot: error: unrecognized arguments: --dpi 300"),
}


@pytest.mark.parametrize("name", list(PLOT_BAD_INPUT))
def test_plot_bad_input_table(name, files, tmp_path, capsys):
    arguments, message = PLOT_BAD_INPUT[name]
    values = dict(files, out=str(tmp_path / "fig.png"))
    line = run_refused(["plot", *(a.format(**values) for a in arguments)], tmp_path, capsys, files)
    assert line.startswith(message.format(**values)), line


def test_help_says_what_resume_keeps(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "continue the run of this checkpoint: options that define the run (--dataset," in text
    assert "--epochs" in text and "default to the checkpoint's values, and giving one with another value is an error" in text


def test_resume_without_run_options_takes_the_checkpoints(files, tmp_path):
    args, resumed = command_line.parse(command_line.get_args_parser(),
                                       ["--resume", files["ckpt"], "--output-dir", str(tmp_path / "x")])
    assert (args.lr, args.label_smoothing, args.epochs, args.dataset) == (0.02, 0.1, 2, "digits")
    assert resumed["epoch"] == 2
    # given explicitly with the checkpoint's values: accepted
    args, _ = command_line.parse(command_line.get_args_parser(),
                                 ["--resume", files["ckpt"], "--lr", "0.02", "--epochs", "2",
                                  "--label-smoothing", "0.1", "--output-dir", str(tmp_path / "x")])
    assert (args.lr, args.label_smoothing, args.epochs) == (0.02, 0.1, 2)
    # --test-only may evaluate on another split layout
    args, _ = command_line.parse(command_line.get_args_parser(),
                                 ["--resume", files["ckpt"], "--test-only", "--calibration-bins", "10",
                                  "--calibration-bootstrap", "0", "--calibration-seed", "5",
                                  "--output-dir", str(tmp_path / "x")])
    assert args.calibration_bins == 10 and args.lr == 0.02
    assert (args.calibration_bootstrap, args.calibration_seed) == (0, 5)


def test_missing_cifar_is_a_one_line_error_naming_data_dir(files, tmp_path, capsys, monkeypatch):
    import urllib.error

    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    line = run_refused(["--dataset", "cifar10", "--model", "resnet20", "--data-dir", str(tmp_path / "cifar"),
                        "--output-dir", str(tmp_path / "run")], tmp_path, capsys, files)
    assert line.startswith("ls-vision: error: --data-dir: CIFAR-10 is not in")


def test_diverging_training_stops_with_one_line_naming_the_term(files, tmp_path, capsys):
    """A learning rate so large that the loss overflows: exit 1, one line, no metrics recorded."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--quiet", "--epochs", "2", "--lr", "1e30", "--output-dir", str(out)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("ls-vision: error: non-finite "), lines[0]
    assert "at epoch 1, step " in lines[0] and "try a lower --lr" in lines[0]
    assert os.listdir(out) == []  # no metrics.json, no checkpoint


def poison_third_call(function):
    """``function``, except that its third call returns nan."""
    calls = []

    def poisoned(*args, **kwargs):
        calls.append(1)
        value = function(*args, **kwargs)
        return value * float("nan") if len(calls) == 3 else value
    return poisoned


@pytest.mark.parametrize("where, term", [
    ("smoothed_cross_entropy", "training loss at epoch 1, step 3 (hard-target term)"),
    ("distillation_loss", "training loss at epoch 1, step 3 (distillation term)"),
    ("logits", "logits at epoch 1, step 3")])
def test_injected_nan_is_named(files, tmp_path, capsys, monkeypatch, where, term):
    """A nan at the third step, in the hard-target term, the distillation term or the logits."""
    from ls_plugins import losses

    if where == "logits":
        real_build = models.build_model

        def build_model(*args, **kwargs):
            model = real_build(*args, **kwargs)
            model.last_layer.forward = poison_third_call(model.last_layer.forward)
            return model
        monkeypatch.setattr(models, "build_model", build_model)
    else:
        monkeypatch.setattr(losses, where, poison_third_call(getattr(losses, where)))
    arguments = ["--quiet", "--epochs", "1", "--output-dir", str(tmp_path / "run")]
    if where == "distillation_loss":
        arguments += ["--teacher", files["good"]]
    with pytest.raises(SystemExit) as exit_info:
        train.main(arguments)
    captured = capsys.readouterr()
    assert exit_info.value.code == 1
    assert captured.err == f"ls-vision: error: non-finite {term}: the training diverged (try a lower --lr)\n"
    assert os.listdir(tmp_path / "run") == []


def test_nan_weights_are_refused_at_evaluation(files, tmp_path, capsys):
    """--test-only on a checkpoint whose weights are nan: no nan metrics are written."""
    checkpoint = torch.load(files["ckpt"], weights_only=True)
    checkpoint["state_dict"]["last_layer.bias"][0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pt")
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--resume", str(tmp_path / "nan.pt"), "--test-only", "--output-dir", str(tmp_path / "eval")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == ("ls-vision: error: non-finite logits in the evaluation of the "
                                       "validation split\n")
    assert not os.path.exists(tmp_path / "eval" / "metrics.json")


# -- the real command -----------------------------------------------------------------------------
COMMANDS = {
    "alpha above 1": (["--label-smoothing", "1.5"], "--label-smoothing: must be in [0, 1), got 1.5"),
    "unknown model": (["--model", "vgg16"], "--model: must be one of"),
    "teacher with 100 classes": (["--teacher", "{wrong}"], "--teacher: the checkpoint's model predicts 100 classes"),
    "teacher runs code": (["--teacher", "{system}"], "--teacher: must name an ls-vision checkpoint, got {system}"),
    "output dir is a file": (["--output-dir", "{file}"], "--output-dir: must name a directory"),
    "plot without runs": (["plot", "--out", "x.png"], None),
}


@pytest.fixture(scope="module")
def commands(files, tmp_path_factory):
    """The bad commands as `python -m ls_plugins.vision.train` (how torchrun starts it), together."""
    root = tmp_path_factory.mktemp("bad")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    processes = {}
    for name, (arguments, _) in COMMANDS.items():
        output_dir = root / name.replace(" ", "_")
        arguments = [a.format(**files) for a in arguments]
        if arguments[0] != "plot" and "--output-dir" not in arguments:
            arguments += ["--output-dir", str(output_dir)]
        command = [sys.executable, "-m", "ls_plugins.vision.train", *arguments]
        processes[name] = (output_dir, subprocess.Popen(command, stdout=subprocess.PIPE, cwd=root,
                                                        stderr=subprocess.PIPE, text=True, env=env))
    return {name: (output_dir, process.wait(timeout=300), *process.communicate())
            for name, (output_dir, process) in processes.items()}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_prints_exactly_one_line(commands, files, name):
    output_dir, returncode, stdout, stderr = commands[name]
    assert returncode == 2, stderr
    assert len(stderr.splitlines()) == 1 and stdout == "", stderr
    prefix = "ls-vision plot: error: " if name.startswith("plot") else "ls-vision: error: "
    assert stderr.startswith(prefix), stderr
    if COMMANDS[name][1] is not None:
        assert stderr.startswith(prefix + COMMANDS[name][1].format(**files)), stderr
    assert not output_dir.exists()
    assert not os.path.exists(files["pwned"])
