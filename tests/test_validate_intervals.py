"""Bootstrap intervals of our criteria's validation statistics (``--calibration-bootstrap B
--calibration-seed S``): fairseq-validate against a teacher-forced pass of our own, the same
intervals under any batching, replicate tables summed over batches and workers by fairseq's own
code, distillation_ce's plumbing, and a run resumed with another B."""
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch
from fairseq.logging import metrics

from conftest import TINY_TRANSFORMER, command, fairseq_setup, first_batch, run
from ls_plugins.calibration import CalibrationStats

BINS = 15
INTERVAL_KEYS = ("ece_low", "ece_high", "nll_loss_low", "nll_loss_high", "accuracy_low",
                 "accuracy_high")

# fairseq-validate, with its end-of-subset stats recorded at full precision (the progress bar
# prints 6 significant digits)
VALIDATE = """
import json, sys
from fairseq.logging import progress_bar
from fairseq_cli import validate

def record(self, stats, tag=None, step=None):
    print("STATS " + json.dumps({key: float(value) for key, value in stats.items()}), flush=True)

progress_bar.SimpleProgressBar.print = record
sys.argv = ["fairseq-validate", *sys.argv[1:]]
validate.cli_main()
"""


def validate(bible, checkpoint, *extra, max_tokens=3000) -> dict:
    result = run([sys.executable, "-c", VALIDATE, bible / "bin", "--user-dir", "ls_plugins",
                  "--task", "translation", "--path", checkpoint, "--valid-subset", "valid",
                  "--cpu", "--no-progress-bar", "--max-tokens", str(max_tokens),
                  "--criterion", "smoothed_ce", "--report-accuracy", *extra])
    lines = [line[len("STATS "):] for line in result.stdout.splitlines() if line.startswith("STATS ")]
    assert len(lines) == 1, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(lines[0])


def teacher_forced(bible, checkpoint, max_tokens: int, **options) -> CalibrationStats:
    """Our own pass over the valid split in fairseq-validate's batches (so that the float32
    log-probabilities are the same numbers): one group per sentence id."""
    from fairseq import checkpoint_utils, utils

    import ls_plugins
    from ls_plugins.tasks.batching import keep_every_example
    ls_plugins.register_fairseq()
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    model = models[0].eval()
    keep_every_example(task)  # fairseq-validate with our criterion scores all 100 sentences
    task.load_dataset("valid")
    batches = task.get_batch_iterator(
        dataset=task.dataset("valid"), max_tokens=max_tokens,
        max_positions=utils.resolve_max_positions(task.max_positions(), model.max_positions()),
    ).next_epoch_itr(shuffle=False)
    stats, seen = CalibrationStats(BINS, **options), []
    with torch.no_grad():
        for sample in batches:
            lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
            target = sample["target"]
            stats.update(lprobs, target, ignore_index=task.target_dictionary.pad(),
                         groups=sample["id"].view(-1, 1).expand_as(target))
            seen += sample["id"].tolist()
    assert sorted(seen) == list(range(100))
    return stats


@pytest.fixture(scope="module")
def validated(bible, ls_checkpoint):
    """fairseq-validate with 50 replicates (seed 3) at --max-tokens 3000."""
    return validate(bible, ls_checkpoint, "--calibration-bootstrap", "50", "--calibration-seed", "3")


def test_validate_ece_and_intervals_equal_an_independent_pass(bible, ls_checkpoint, validated):
    stats = teacher_forced(bible, ls_checkpoint, 3000, bootstrap=50, seed=3)
    assert validated["ece"] == pytest.approx(stats.ece(), abs=1e-9)
    expected = {"ece": stats.interval("ece"),
                "nll_loss": [x / math.log(2) for x in stats.interval("nll")],
                "accuracy": [100 * x for x in stats.interval("accuracy")]}
    for name, (low, high) in expected.items():  # the same float32 model in another process:
        # its mean NLL (about 7.6 bits) may differ from ours in the 10th digit
        assert validated[f"{name}_low"] == pytest.approx(low, rel=1e-9, abs=1e-9), name
        assert validated[f"{name}_high"] == pytest.approx(high, rel=1e-9, abs=1e-9), name
        assert low < high
    # another seed gives other replicates: the seed reaches the criterion
    other_seed = teacher_forced(bible, ls_checkpoint, 3000, bootstrap=50, seed=4)
    assert stats.interval("ece") != other_seed.interval("ece")
    print(f"validate ECE {validated['ece']:.5f} [{validated['ece_low']:.5f}, "
          f"{validated['ece_high']:.5f}], nll_loss {validated['nll_loss']:.3f} "
          f"[{validated['nll_loss_low']:.3f}, {validated['nll_loss_high']:.3f}] bits")


def test_intervals_do_not_depend_on_the_batching(bible, ls_checkpoint, validated):
    """Small batches without the size multiple of 8 (dozens of batches) against two large ones:
    the weights follow the sentence id, not a position in a batch."""
    small = validate(bible, ls_checkpoint, "--calibration-bootstrap", "50", "--calibration-seed",
                     "3", "--required-batch-size-multiple", "1", max_tokens=150)
    for key in ("ece", "nll_loss", "accuracy", *INTERVAL_KEYS):
        # float32 log-probabilities of differently padded batches differ in the last bits
        assert small[key] == pytest.approx(validated[key], abs=1e-6), key


def test_no_bootstrap_logs_no_interval_and_the_same_values(bible, ls_checkpoint, validated):
    plain = validate(bible, ls_checkpoint)
    assert not [key for key in plain if key.endswith(("_low", "_high"))]
    for key in ("ece", "mce", "confidence", "brier", "nll_loss", "accuracy"):
        assert plain[key] == pytest.approx(validated[key], abs=1e-12), key
    assert plain["ece"] == pytest.approx(teacher_forced(bible, ls_checkpoint, 3000).ece(), abs=1e-9)


# -- summing, in-process -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_model(bible):
    _, task, model = fairseq_setup(bible / "bin")
    return task, model.eval(), first_batch(task)


def shard(sample, rows, pad):
    return {"id": sample["id"][rows], "nsentences": len(sample["id"][rows]),
            "ntokens": int(sample["target"][rows].ne(pad).sum()),
            "net_input": {k: v[rows] for k, v in sample["net_input"].items()},
            "target": sample["target"][rows]}


def reduced(crit, *batches_of_logging_outputs) -> dict:
    """Smoothed values after one reduce_metrics call per batch into one aggregator, as
    fairseq-train's validation does (fairseq-validate makes one call with every batch)."""
    with metrics.aggregate(new_root=True) as agg:
        for logging_outputs in batches_of_logging_outputs:
            crit.reduce_metrics(logging_outputs)
        return agg.get_smoothed_values()


def fast_stat_sync_sum(logging_outputs):
    """fairseq's Trainer._fast_stat_sync_sum (key-by-key sum, then all_reduce_dict) on a
    one-process gloo group."""
    import torch.distributed as dist
    from fairseq.trainer import Trainer
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        trainer = SimpleNamespace(device=torch.device("cpu"), data_parallel_process_group=None)
        return Trainer._fast_stat_sync_sum(trainer, logging_outputs)[0]
    finally:
        dist.destroy_process_group()


def test_replicate_tables_sum_over_batches_and_workers(random_model):
    from fairseq.criterions import CRITERION_REGISTRY
    task, model, sample = random_model
    crit = CRITERION_REGISTRY["smoothed_ce"](task, sentence_avg=False, report_accuracy=True,
                                             calibration_bootstrap=30, calibration_seed=5).eval()
    half = sample["target"].size(0) // 2
    with torch.no_grad():
        _, _, whole = crit(model, sample)
        _, _, first = crit(model, shard(sample, slice(0, half), crit.padding_idx))
        _, _, second = crit(model, shard(sample, slice(half, None), crit.padding_idx))
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    replicates = [key for key in whole if key.startswith("_cal_replicates")]
    assert replicates == ["_cal_replicates_30x47"]
    assert whole[replicates[0]].dtype == torch.float64
    reference = CalibrationStats(BINS, bootstrap=30, seed=5)
    reference.update(lprobs, sample["target"], ignore_index=crit.padding_idx,
                     groups=sample["id"].view(-1, 1).expand_as(sample["target"]))
    expected = reduced(crit, [whole])
    assert (expected["ece_low"], expected["ece_high"]) == pytest.approx(reference.interval("ece"),
                                                                          abs=1e-12)
    synced = fast_stat_sync_sum([first, second])
    for got in (reduced(crit, [first], [second]), reduced(crit, [first, second]),
                reduced(crit, synced)):
        for key in ("ece", *INTERVAL_KEYS):
            assert got[key] == pytest.approx(expected[key], abs=1e-12), key
        assert not [key for key in got if key.startswith("_")]  # hidden from the progress bar


def test_distillation_ce_passes_the_options(bible, ls_checkpoint, random_model):
    task, model, sample = random_model
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(bible / "bin"), *TINY_TRANSFORMER, "--criterion", "distillation_ce", "--teacher-path",
        str(ls_checkpoint), "--calibration-bootstrap", "9", "--calibration-seed", "4"])
    crit = task.build_criterion(convert_namespace_to_omegaconf(args).criterion).eval()
    with torch.no_grad():
        _, _, log = crit(model, sample)
        lprobs = model.get_normalized_probs(model(**sample["net_input"]), log_probs=True)
    reference = CalibrationStats(BINS, bootstrap=9, seed=4)
    reference.update(lprobs, sample["target"], ignore_index=crit.padding_idx,
                     groups=sample["id"].view(-1, 1).expand_as(sample["target"]))
    torch.testing.assert_close(log["_cal_replicates_9x47"], reference.replicate_sums,
                               rtol=0, atol=1e-9)


# -- training --------------------------------------------------------------------------------

def test_kept_valid_meters_restored_then_another_bootstrap(random_model, tmp_path):
    """fairseq-train keeps its "valid" meters in checkpoints (a run resumed mid-epoch restores
    them); the replicate table is a tensor there, and a run resumed with another B must not add
    tables of two shapes (the key carries the shape)."""
    from fairseq.criterions import CRITERION_REGISTRY
    task, model, sample = random_model

    def logging_output(replicates):
        crit = CRITERION_REGISTRY["smoothed_ce"](task, sentence_avg=False,
                                                 calibration_bootstrap=replicates).eval()
        with torch.no_grad():
            return crit, crit(model, sample)[2]
    crit20, log20 = logging_output(20)
    crit10, log10 = logging_output(10)
    with metrics.aggregate("kept_valid_meters", new_root=True) as kept:
        crit20.reduce_metrics([log20])
    torch.save(metrics.state_dict(), tmp_path / "metrics.pt")
    metrics.load_state_dict(torch.load(tmp_path / "metrics.pt"))  # weights_only: tensors load
    with metrics.aggregate("kept_valid_meters", new_root=True) as restored:
        assert restored is not kept and [tuple(meter.sum.shape) for key, meter in restored.items()
                                         if key.startswith("_cal_replicates")] == [(20, 47)]
        crit10.reduce_metrics([log10])
        values = restored.get_smoothed_values()
    with metrics.aggregate(new_root=True) as fresh:
        crit10.reduce_metrics([log10])
        assert values["ece_low"] == fresh.get_smoothed_values()["ece_low"]


@pytest.mark.slow
def test_training_resumed_mid_epoch_with_another_bootstrap(bible, tmp_path):
    """fairseq keeps its "valid" meters in checkpoints: a run resumed with another B must not add
    replicate tables of two shapes (the key carries the shape)."""
    def train(updates, replicates):
        result = run([command("fairseq-train"), bible / "bin", "--user-dir", "ls_plugins",
                      *TINY_TRANSFORMER, "--criterion", "smoothed_ce", "--label-smoothing", "0.1",
                      "--calibration-bootstrap", str(replicates), "--max-update", str(updates),
                      "--save-interval-updates", str(updates), "--save-dir", tmp_path])
        return result.stdout + result.stderr
    assert "ece_low" in train(10, 20)
    state = torch.load(tmp_path / "checkpoint_last.pt")  # safe loading, tensors in the metrics
    kept = {key: meter for _, key, _, meter in state["extra_state"]["metrics"]["valid"]}
    assert kept["_cal_replicates_20x47"]["sum"].shape == (20, 47)
    resumed = train(15, 10)
    assert "Loaded checkpoint" in resumed and "num_updates 15" in resumed
    assert "ece_low" in resumed.split("Loaded checkpoint")[1]
