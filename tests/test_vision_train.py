"""ls-vision end to end on the offline digits set: metrics against independent references,
the loss functions it trains with, distillation, resume, plotting, and torchrun + gloo."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score
from torchmetrics.functional.classification import multiclass_calibration_error

from ls_plugins import losses
from ls_plugins.vision import checkpointing, data, models, train

DIGITS = ["--dataset", "digits", "--model", "smallcnn", "--quiet"]
TIMING = set(train.TIMING_KEYS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(output_dir, *extra):
    train.main(DIGITS + ["--output-dir", str(output_dir), *map(str, extra)])
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as handle:
        return json.load(handle)


def without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING} for record in history]


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """Two 10-epoch runs on digits: hard targets and label smoothing 0.1 (a few seconds each)."""
    root = tmp_path_factory.mktemp("digits")
    return {alpha: (root / f"ls{alpha}", run(root / f"ls{alpha}", "--epochs", 10,
                                             "--label-smoothing", alpha))
            for alpha in (0.0, 0.1)}


def test_logits(run_dir, split):
    """Logits of the run's final checkpoint on a digits split, computed outside the trainer."""
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    model = models.build_model("smallcnn", 10, 1, 8)
    model.load_state_dict(checkpoint["state_dict"])
    dataset = getattr(data.build_splits("digits"), split)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    targets = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        return model.eval()(images), targets


test_logits.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_digits_metrics_match_independent_references(digits_runs, alpha):
    run_dir, metrics = digits_runs[alpha]
    final = metrics["final"]
    assert len(metrics["history"]) == 10 and metrics["epochs_trained"] == 10
    assert final["test_accuracy"] > 0.9  # chance is 0.1
    logits, targets = test_logits(run_dir, "test")
    probs = logits.softmax(-1)
    assert final["test"]["count"] == 360
    assert final["test_accuracy"] == pytest.approx(accuracy_score(targets, logits.argmax(-1)), abs=1e-12)
    assert final["test_nll"] == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-5)
    reference_ece = multiclass_calibration_error(probs, targets, num_classes=10, n_bins=15, norm="l1")
    assert final["test_ece"] == pytest.approx(reference_ece.item(), abs=1e-6)
    assert final["test_confidence"] == pytest.approx(probs.max(-1).values.mean().item(), abs=1e-6)
    # the fitted temperature minimises the validation NLL ...
    val_logits, val_targets = test_logits(run_dir, "val")
    fitted = final["temperature"]
    nll = [F.cross_entropy(val_logits / t, val_targets).item() for t in (fitted / 1.05, fitted, fitted * 1.05)]
    assert nll[1] < nll[0] and nll[1] < nll[2]
    # ... and the test set is scored at it
    scaled_ece = multiclass_calibration_error((logits / fitted).softmax(-1), targets, num_classes=10,
                                              n_bins=15, norm="l1")
    assert final["test_ece_scaled"] == pytest.approx(scaled_ece.item(), abs=1e-5)  # float32 at T < 1
    assert final["test_nll_scaled"] == pytest.approx(F.cross_entropy(logits / fitted, targets).item(), rel=1e-5)
    assert final["test_overconfidence"] == pytest.approx(final["test_confidence"] - final["test_accuracy"])
    assert (run_dir / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [name for name in os.listdir(run_dir) if name.startswith(".tmp-")]


def test_label_smoothing_lowers_overconfidence_on_digits(digits_runs):
    hard = digits_runs[0.0][1]["final"]
    smooth = digits_runs[0.1][1]["final"]
    assert smooth["test_overconfidence"] < hard["test_overconfidence"] - 0.02
    # label smoothing softens the network itself: its fitted temperature is further below 1
    assert smooth["temperature"] < hard["temperature"]


def test_checkpoint_loads_safely_and_holds_the_teacher_format(digits_runs):
    run_dir, metrics = digits_runs[0.1]
    model, checkpoint = models.load_trained_model(str(run_dir / "checkpoint.pt"))  # weights_only
    assert (checkpoint["model"], checkpoint["num_classes"], checkpoint["dataset"]) == ("smallcnn", 10, "digits")
    assert checkpoint["epoch"] == 10 and checkpoint["args"]["label_smoothing"] == 0.1
    assert {"optimizer", "lr_scheduler", "scaler", "rng", "history"} <= set(checkpoint)
    assert not model.training
    logits, _ = test_logits(run_dir, "test")
    with torch.no_grad():
        images = torch.stack([x for x, _ in data.build_splits("digits").test])
        assert torch.equal(model(images), logits)


def test_training_loss_is_losses_smoothed_cross_entropy(tmp_path, monkeypatch):
    calls = []
    real = losses.smoothed_cross_entropy

    def spy(logits, target, alpha=0.0, **kwargs):
        value = real(logits, target, alpha, **kwargs)
        reference = F.cross_entropy(logits.detach(), target, label_smoothing=alpha)
        calls.append((alpha, kwargs, value.item(), reference.item()))
        return value

    monkeypatch.setattr(losses, "smoothed_cross_entropy", spy)
    metrics = run(tmp_path / "run", "--epochs", 1, "--label-smoothing", 0.2, "--batch-size", 100)
    assert len(calls) == 1077 // 100  # one call per training step, last partial batch dropped
    assert all(alpha == 0.2 and kwargs == {"reduction": "mean"} for alpha, kwargs, _, _ in calls)
    for _, _, value, reference in calls:
        assert value == pytest.approx(reference, rel=1e-5)
    # the logged training loss is the mean of what the loss function returned
    mean = sum(value for _, _, value, _ in calls) / len(calls)
    assert metrics["history"][0]["train_loss"] == pytest.approx(mean, rel=1e-9)


def test_distillation_uses_distillation_loss_and_reports_teacher_gamma(digits_runs, tmp_path, monkeypatch):
    teacher_path = digits_runs[0.0][0] / "checkpoint.pt"
    teacher_bytes = teacher_path.read_bytes()
    calls = []
    real = losses.distillation_loss

    def spy(student_logits, teacher_logits, target, **kwargs):
        calls.append((kwargs, kwargs["teacher_probs"].detach().clone(), target.clone()))
        return real(student_logits, teacher_logits, target, **kwargs)

    monkeypatch.setattr(losses, "distillation_loss", spy)
    monkeypatch.setattr(losses, "smoothed_cross_entropy", None)  # must not be used when distilling
    metrics = run(tmp_path / "student", "--epochs", 2, "--teacher", teacher_path,
                  "--distill-temperature", 4, "--distill-weight", 0.7, "--label-smoothing", 0.05)
    assert len(calls) == 2 * (1077 // 64)
    for kwargs, probs, _ in calls:
        assert (kwargs["beta"], kwargs["temperature"], kwargs["alpha"], kwargs["reduction"]) == (0.7, 4.0, 0.05, "mean")
        torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))
    # gamma = E[sum_k (1 - y_k) p^t_k(T) K / (K - 1)] over each epoch's training images
    per_epoch = len(calls) // 2
    for epoch in range(2):
        chunk = calls[epoch * per_epoch:(epoch + 1) * per_epoch]
        probs = torch.cat([p for _, p, _ in chunk]).double()
        targets = torch.cat([t for _, _, t in chunk])
        reference = ((1 - probs[torch.arange(len(targets)), targets]) * 10 / 9).mean().item()
        assert metrics["history"][epoch]["teacher_gamma"] == pytest.approx(reference, rel=1e-9)
    assert metrics["final"]["teacher_gamma"] == metrics["history"][-1]["teacher_gamma"]
    # a teacher at T=4 is much softer than its T=1 predictions (gamma near 0 for a 99% teacher)
    assert metrics["final"]["teacher_gamma"] > 0.3
    assert teacher_path.read_bytes() == teacher_bytes
    assert metrics["final"]["test_accuracy"] > 0.5  # it learns (chance is 0.1)


def test_resumed_run_ends_with_the_metrics_of_an_uninterrupted_run(tmp_path, monkeypatch):
    settings = ("--epochs", 4, "--lr-scheduler", "step", "--lr-milestones", 3, "--seed", 7,
                "--label-smoothing", 0.1, "--lr", 0.03)
    full = run(tmp_path / "full", *settings)

    real_save = checkpointing.save

    def killed_after_epoch_2(checkpoint, path):
        real_save(checkpoint, path)
        if checkpoint["epoch"] == 2:
            raise KeyboardInterrupt  # the process dies right after the epoch-2 checkpoint

    monkeypatch.setattr(checkpointing, "save", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", *settings)
    monkeypatch.undo()
    with open(tmp_path / "killed" / "metrics.json", encoding="utf-8") as handle:
        partial = json.load(handle)
    assert len(partial["history"]) == 2 and "final" not in partial
    shutil.copytree(tmp_path / "killed", tmp_path / "killed-bare")

    # the run's options repeated on the command line, or left to the checkpoint
    resumed = run(tmp_path / "killed", *settings, "--resume", tmp_path / "killed" / "checkpoint.pt")
    bare = run(tmp_path / "killed-bare", "--resume", tmp_path / "killed-bare" / "checkpoint.pt")
    for other in (resumed, bare):
        assert without_timing(other["history"]) == without_timing(full["history"])
        assert other["final"] == full["final"]
    assert bare["args"]["label_smoothing"] == 0.1 and bare["args"]["lr_milestones"] == [3]
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    for directory in ("killed", "killed-bare"):
        b = torch.load(tmp_path / directory / "checkpoint.pt", weights_only=True)
        for name, tensor in a["state_dict"].items():
            assert torch.equal(tensor, b["state_dict"][name]), name
    # the step schedule crossed its milestone after the resume: lr x 0.1 from epoch 4
    assert [r["lr"] for r in full["history"]] == pytest.approx([0.03, 0.03, 0.03, 0.003])


def test_plot_draws_fig2_curves_from_several_runs(digits_runs, tmp_path, monkeypatch):
    from ls_plugins import plots

    drawn = {}
    real = plots.reliability_diagram

    def spy(curves, path, title):
        drawn.update(curves=curves, title=title)
        real(curves, path, title)

    monkeypatch.setattr(plots, "reliability_diagram", spy)
    out = tmp_path / "figures" / "fig2.png"
    hard_dir, hard = digits_runs[0.0]
    smooth_dir, smooth = digits_runs[0.1]
    assert train.main(["plot", str(hard_dir), str(smooth_dir), "--out", str(out), "--title", "digits"]) == 0
    temperature = hard["final"]["temperature"]
    assert list(drawn["curves"]) == ["hard targets", f"hard targets, T={temperature:.2f}", "α=0.1"]
    assert drawn["curves"]["hard targets"] == hard["final"]["test"]
    assert drawn["curves"][f"hard targets, T={temperature:.2f}"] == hard["final"]["test_scaled"]
    assert drawn["curves"]["α=0.1"] == smooth["final"]["test"]
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_rejects_an_unfinished_run(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps({"args": {}, "history": []}))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("ls-vision plot: error: RUN_DIR: ")
    assert err.endswith("(no final metrics: the run has not finished)\n")
    assert not (tmp_path / "x.png").exists()


def test_vision_trainer_never_imports_fairseq(tmp_path):
    """A real ls-vision run (training, evaluation, checkpoint, figure) and `ls-vision plot`, in a
    fresh interpreter: afterwards no fairseq module, and none of our fairseq-side modules, is
    loaded."""
    code = ("import sys\n"
            "from ls_plugins.vision import train\n"
            f"train.main(['--epochs', '1', '--quiet', '--output-dir', {str(tmp_path / 'run')!r}])\n"
            f"train.main(['plot', {str(tmp_path / 'run')!r}, '--out', {str(tmp_path / 'fig.png')!r}])\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'fairseq' or m.startswith("
            "('ls_plugins.criterions', 'ls_plugins.tasks', 'ls_plugins.scoring', 'ls_plugins.sweep'))]\n"
            "print('imported:', bad, 'plots loaded:', 'ls_plugins.plots' in sys.modules)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "imported: [] plots loaded: True", result.stdout
    assert (tmp_path / "run" / "checkpoint.pt").exists() and (tmp_path / "fig.png").exists()


def test_torchrun_two_processes_match_one_process_and_train(tmp_path):
    """2 processes (gloo): DistributedDataParallel training, evaluation sharded without padding
    and aggregated by summing the per-bin sums; a 1-process evaluation of the same checkpoint
    must give the same metrics."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp_dir, eval_dir = tmp_path / "ddp", tmp_path / "eval"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ls_plugins.vision.train", *DIGITS, "--epochs", "3", "--batch-size", "32",
               "--output-dir", str(ddp_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((ddp_dir / "metrics.json").read_text())
    assert ddp["world_size"] == 2
    assert ddp["final"]["test_accuracy"] > 0.9  # it trains
    # both processes stepped: 2 x (ceil(1077 / 2) // 32) batches of 32 images per epoch
    checkpoint = torch.load(ddp_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["optimizer"]["state"] and len(checkpoint["rng"]) == 2

    single = [sys.executable, "-m", "ls_plugins.vision.train", *DIGITS, "--test-only",
              "--resume", str(ddp_dir / "checkpoint.pt"), "--output-dir", str(eval_dir)]
    result = subprocess.run(single, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    one = json.loads((eval_dir / "metrics.json").read_text())
    assert one["world_size"] == 1
    for key in ("val_accuracy", "val_nll", "val_ece", "temperature", "test_accuracy", "test_nll",
                "test_ece", "test_mce", "test_confidence", "test_ece_scaled", "test_nll_scaled"):
        assert one["final"][key] == pytest.approx(ddp["final"][key], abs=1e-6), key
    for name in ("val", "test", "test_scaled"):
        assert one["final"][name]["count"] == ddp["final"][name]["count"]
        assert [b["count"] for b in one["final"][name]["bins"]] == [b["count"] for b in ddp["final"][name]["bins"]]
