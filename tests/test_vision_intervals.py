"""ls-vision's bootstrap intervals (issue 12): images are the groups, each image's id is its index
in its split's data set, so the intervals of the final evaluation equal a recomputation from the
checkpoint's logits, do not depend on the evaluation batch size or the number of processes, and
two runs evaluated with the same seed are paired."""
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from ls_plugins import calibration
from ls_plugins.vision import data, models, train

B, SEED, EVAL_BATCH = 100, 3, 64  # not the defaults (200, 0, 256): the options must be honoured
DIGITS = ["--dataset", "digits", "--model", "smallcnn", "--quiet", "--epochs", "1",
          "--calibration-bootstrap", str(B), "--calibration-seed", str(SEED),
          "--eval-batch-size", str(EVAL_BATCH)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(argv):
    """``train.main(argv)``; returns (metrics.json of --output-dir, what it printed)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train.main([*map(str, argv)]) == 0
    output_dir = argv[argv.index("--output-dir") + 1]
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as handle:
        return json.load(handle), printed.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One-epoch digits runs with hard targets and with alpha 0.05, same calibration seed."""
    root = tmp_path_factory.mktemp("intervals")
    return {alpha: (root / f"ls{alpha}", *run(DIGITS + ["--label-smoothing", alpha,
                                                        "--output-dir", root / f"ls{alpha}"]))
            for alpha in (0.0, 0.05)}


def recomputed(run_dir, split, temperature=1.0):
    """The split's statistics from the run's checkpoint, outside the trainer: logits in batches of
    the run's evaluation batch size (bitwise the trainer's), every image of the split, group id
    = its index in the data set."""
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    model = models.build_model("smallcnn", 10, 1, 8)
    model.load_state_dict(checkpoint["state_dict"])
    dataset = getattr(data.build_splits("digits"), split)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    targets = torch.tensor([dataset[i][1] for i in range(len(dataset))])
    with torch.no_grad():
        logits = torch.cat([model.eval()(images[i:i + EVAL_BATCH])
                            for i in range(0, len(images), EVAL_BATCH)])
    stats = calibration.CalibrationStats(15, bootstrap=B, seed=SEED)
    stats.update(logits, targets, temperature=temperature, groups=torch.arange(len(targets)))
    return stats


def assert_same_intervals(got: dict, expected: dict, rel: float = 0.0):
    """Same bootstrap, seed, count, and every metric's interval and replicates to 1e-9 (and
    ``rel``: the float32 logits of one image differ in the last bits between batch sizes, which
    moves an NLL near 2 by about 1e-9; another assignment of ids moves replicates by ~1e-2)."""
    assert (got["bootstrap"], got["seed"], got["count"]) == (expected["bootstrap"], expected["seed"],
                                                            expected["count"])
    for metric in calibration.METRICS:
        assert got["intervals"][metric] == pytest.approx(expected["intervals"][metric], abs=1e-9,
                                                         rel=rel), metric
        assert got["replicates"][metric] == pytest.approx(expected["replicates"][metric], abs=1e-9,
                                                          rel=rel, nan_ok=True), metric


def test_final_intervals_equal_a_recomputation_from_the_checkpoint(runs):
    run_dir, metrics, printed = runs[0.0]
    final = metrics["final"]
    for split, name, temperature in (("val", "val", 1.0), ("test", "test", 1.0),
                                     ("test", "test_scaled", final["temperature"])):
        expected = recomputed(run_dir, split, temperature).to_dict()
        assert final[name]["bootstrap"] == B and final[name]["seed"] == SEED
        assert_same_intervals(final[name], expected)
        assert final[name]["ece"] == pytest.approx(expected["ece"], abs=1e-12)
    # the per-epoch records stay scalars without intervals; the summary prints the test ECE's
    assert "test_ece" in metrics["history"][-1] and "intervals" not in metrics["history"][-1]
    for name, label in (("test", "T=1"), ("test_scaled", f"T*={final['temperature']:.3f}")):
        low, high = final[name]["intervals"]["ece"]
        assert f"{label} {final[name]['ece']:.4f} [{low:.4f}, {high:.4f}]" in printed, printed


def test_evaluation_batch_size_does_not_change_the_intervals(runs, tmp_path):
    """--test-only on the checkpoint in ragged batches of 7 (the calibration options come from
    the checkpoint): the replicate tables sum to those of batches of 64; with
    --calibration-bootstrap 0 there are no intervals."""
    run_dir, metrics, _ = runs[0.0]
    checkpoint = run_dir / "checkpoint.pt"
    again, _ = run(["--resume", checkpoint, "--test-only", "--quiet", "--eval-batch-size", 7,
                    "--output-dir", tmp_path / "batch7"])
    assert again["args"]["calibration_bootstrap"] == B and again["args"]["calibration_seed"] == SEED
    for name in ("val", "test", "test_scaled"):
        assert_same_intervals(again["final"][name], metrics["final"][name], rel=1e-8)
    off, printed = run(["--resume", checkpoint, "--test-only", "--quiet", "--calibration-bootstrap", 0,
                        "--output-dir", tmp_path / "off"])
    assert "intervals" not in off["final"]["test"] and "replicates" not in off["final"]["test"]
    assert off["final"]["test"]["ece"] == pytest.approx(metrics["final"]["test"]["ece"], abs=1e-9)
    assert "bootstrap" not in printed and " [" not in printed, printed


def test_two_processes_give_the_intervals_of_one(runs, tmp_path):
    """torchrun, 2 processes (gloo), --test-only: each process scores every other image and the
    replicate tables are all-reduced."""
    run_dir, metrics, _ = runs[0.0]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ls_plugins.vision.train", "--quiet", "--test-only", "--resume",
               str(run_dir / "checkpoint.pt"), "--output-dir", str(tmp_path / "ddp")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["world_size"] == 2
    for name in ("val", "test", "test_scaled"):
        assert_same_intervals(ddp["final"][name], metrics["final"][name], rel=1e-8)


def test_runs_with_the_same_seed_are_paired(runs):
    """The paired interval of two runs' ECE difference read back from their metrics.json equals
    the one of statistics recomputed from their checkpoints (same images, same seed)."""
    (dir_a, metrics_a, _), (dir_b, metrics_b, _) = runs[0.0], runs[0.05]
    test_a, test_b = recomputed(dir_a, "test"), recomputed(dir_b, "test")
    for metric in ("ece", "nll"):
        from_json = calibration.paired_replicate_interval(metrics_a["final"]["test"],
                                                          metrics_b["final"]["test"], metric)
        assert from_json == pytest.approx(calibration.paired_interval(test_a, test_b, metric), abs=1e-9)
