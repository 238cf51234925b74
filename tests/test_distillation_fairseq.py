"""distillation_ce and ls-cache-teacher end to end: live teacher vs cache, training, bad input."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
from fairseq.logging import metrics

from conftest import command, fairseq_setup, fairseq_train, first_batch, run

STUDENT = ["--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
           "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64"]


def dictionary_size(bible) -> int:
    from fairseq.data import Dictionary
    return len(Dictionary.load(str(bible / "bin" / "dict.en.txt")))


def cache_teacher(bible, teacher, out, *extra):
    return run([command("ls-cache-teacher"), bible / "bin", "--teacher-path", teacher, "--out", out,
                "--no-progress-bar", *extra])


@pytest.fixture(scope="module")
def cache_full(bible, ls_checkpoint, tmp_path_factory):
    """Every class (k = K) of the teacher on the valid split, stored at T_c = 1."""
    out = tmp_path_factory.mktemp("cache_full")
    cache_teacher(bible, ls_checkpoint, out, "--split", "valid", "--topk", str(dictionary_size(bible)))
    return out


@pytest.fixture(scope="module")
def cache8(bible, ls_checkpoint, tmp_path_factory):
    """The teacher's top 8 on train and valid, stored at T_c = 2."""
    out = tmp_path_factory.mktemp("cache8")
    cache_teacher(bible, ls_checkpoint, out, "--split", "train,valid", "--topk", "8",
                  "--temperature", "2")
    return out


def setup(bible, *criterion_args):
    """(task, model, criterion) in-process; train_subset=valid so that both modes use valid."""
    cfg, task, model = fairseq_setup(bible / "bin", "--train-subset", "valid", "--dropout", "0",
                                     "--criterion", "distillation_ce", *criterion_args)
    return task, model, task.build_criterion(cfg.criterion)


def criterion_for(bible, task, *criterion_args):
    cfg, _, _ = fairseq_setup(bible / "bin", "--train-subset", "valid", "--dropout", "0",
                              "--criterion", "distillation_ce", *criterion_args)
    return task.build_criterion(cfg.criterion)


# ---------------------------------------------------------------------------------------------
# the cache on disk
# ---------------------------------------------------------------------------------------------

def test_cache_layout_and_manifest(bible, ls_checkpoint, cache8):
    _, task, _ = fairseq_setup(bible / "bin")
    task.load_dataset("train")
    dataset = task.dataset("train")
    split_dir = cache8 / "train"
    manifest = json.loads((split_dir / "manifest.json").read_text())
    assert manifest["split"] == "train" and manifest["k"] == 8 and manifest["temperature"] == 2.0
    assert manifest["num_classes"] == len(task.target_dictionary) == dictionary_size(bible)
    assert manifest["num_examples"] == manifest["num_present"] == len(dataset)
    assert manifest["teacher_paths"] == [str(ls_checkpoint)]
    offsets = np.load(split_dir / "offsets.npy")
    assert np.array_equal(np.diff(offsets), dataset.tgt_sizes)
    values, tail = np.load(split_dir / "values.npy"), np.load(split_dir / "tail.npy")
    targets = np.load(split_dir / "targets.npy")
    assert values.shape == (offsets[-1], 8) and (np.diff(values, axis=1) <= 0).all()
    # kept mass + tail mass = 1 per position
    total = np.exp(values.astype(np.float64)).sum(1) + np.exp(tail.astype(np.float64))
    assert np.allclose(total, 1.0, atol=1e-5)
    for i in (0, 17, len(dataset) - 1):  # rows of example i hold its target
        assert np.array_equal(targets[offsets[i]:offsets[i + 1]], dataset[i]["target"].numpy())
    assert not list(cache8.glob(".tmp-*"))


# ---------------------------------------------------------------------------------------------
# live teacher vs cache, in-process on the same batch
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_first_batch_loss_live_equals_cache_with_all_classes(bible, ls_checkpoint, cache_full, mode):
    common = ["--distill-temperature", "2", "--distill-weight", "0.5", "--label-smoothing", "0.1"]
    task, model, live = setup(bible, *common, "--teacher-path", str(ls_checkpoint))
    cached = criterion_for(bible, task, *common, "--teacher-cache", str(cache_full))
    sample = first_batch(task)
    getattr(model, mode)()
    loss_live, size_live, log_live = live(model, sample)
    loss_cache, size_cache, log_cache = cached(model, sample)
    assert size_live == size_cache == sample["ntokens"]
    assert loss_cache.item() == pytest.approx(loss_live.item(), rel=1e-6)
    assert log_cache["nll_loss"].item() == log_live["nll_loss"].item()
    assert log_cache["soft_loss"].item() == pytest.approx(log_live["soft_loss"].item(), rel=1e-6)
    assert log_cache["teacher_incorrect"] == pytest.approx(log_live["teacher_incorrect"], rel=1e-6)
    assert log_live["teacher_tokens"] == sample["ntokens"]
    # and it is the formula: (1-b) H(y_ls, p) + b H(q(T), p(T)) with the teacher run by hand
    teacher = live.teachers.models[0]
    with torch.no_grad():
        z_t = teacher(**sample["net_input"])[0]
        z_s = model(**sample["net_input"])[0]
    from ls_plugins.losses import distillation_loss
    want = distillation_loss(z_s, z_t, sample["target"], beta=0.5, temperature=2.0, alpha=0.1,
                             ignore_index=task.target_dictionary.pad())
    assert loss_live.item() == pytest.approx(want.item(), rel=1e-5)


def test_scale_t2_and_ignore_prefix_size(bible, ls_checkpoint, cache_full):
    """--distill-scale-t2 multiplies the soft term by T^2; --ignore-prefix-size drops the first
    target positions, for the live teacher and the cache alike."""
    common = ["--distill-temperature", "3", "--distill-weight", "0.5", "--label-smoothing", "0.1",
              "--distill-scale-t2", "--ignore-prefix-size", "2"]
    task, model, live = setup(bible, *common, "--teacher-path", str(ls_checkpoint))
    cached = criterion_for(bible, task, *common, "--teacher-cache", str(cache_full))
    sample = first_batch(task)
    model.eval()
    loss_live, _, log_live = live(model, sample)
    loss_cache, _, _ = cached(model, sample)
    teacher = live.teachers.models[0]
    with torch.no_grad():
        z_t = teacher(**sample["net_input"])[0][:, 2:]
        z_s = model(**sample["net_input"])[0][:, 2:]
    from ls_plugins.losses import distillation_loss
    target, pad = sample["target"][:, 2:], task.target_dictionary.pad()
    want = distillation_loss(z_s, z_t, target, beta=0.5, temperature=3.0, alpha=0.1,
                             ignore_index=pad, scale_by_t2=True)
    assert loss_live.item() == pytest.approx(want.item(), rel=1e-5)
    assert loss_cache.item() == pytest.approx(want.item(), rel=1e-5)
    # by hand: 0.5 * H(y_ls, p) + 0.5 * 9 * H(q(3), p(3)) over the kept positions
    keep = target.ne(pad)
    lp, lp3 = torch.log_softmax(z_s[keep], -1), torch.log_softmax(z_s[keep] / 3, -1)
    q = torch.softmax(z_t[keep] / 3, -1)
    hard = -(0.9 * lp.gather(1, target[keep][:, None]).squeeze(1) + 0.1 * lp.mean(1))
    soft = -(q * lp3).sum(1)
    assert loss_live.item() == pytest.approx((0.5 * hard + 4.5 * soft).sum().item(), rel=1e-5)
    assert log_live["soft_loss"].item() == pytest.approx(soft.sum().item(), rel=1e-5)


def test_live_top_k_equals_cache_top_k_at_the_cache_temperature(bible, ls_checkpoint, cache8):
    common = ["--distill-temperature", "2", "--distill-weight", "1", "--teacher-topk", "8"]
    task, model, live = setup(bible, *common, "--teacher-path", str(ls_checkpoint))
    cached = criterion_for(bible, task, *common, "--teacher-cache", str(cache8))
    dropped = criterion_for(bible, task, *common, "--teacher-cache", str(cache8),
                            "--teacher-tail", "drop")
    top3 = criterion_for(bible, task, "--distill-temperature", "2", "--distill-weight", "1",
                         "--teacher-topk", "3", "--teacher-path", str(ls_checkpoint))
    top3_cached = criterion_for(bible, task, "--distill-temperature", "2", "--distill-weight", "1",
                                "--teacher-topk", "3", "--teacher-cache", str(cache8))
    sample = first_batch(task)
    model.eval()
    a, b = live(model, sample), cached(model, sample)
    assert b[0].item() == pytest.approx(a[0].item(), rel=1e-5)
    assert b[2]["teacher_incorrect"] == pytest.approx(a[2]["teacher_incorrect"], rel=1e-5)
    assert top3_cached(model, sample)[0].item() == pytest.approx(top3(model, sample)[0].item(), rel=1e-5)
    # dropping the tail is a different (documented) target: the teacher looks sharper
    c = dropped(model, sample)
    assert c[2]["teacher_incorrect"] < b[2]["teacher_incorrect"]


def test_cache_index_survives_shuffled_batches(bible, ls_checkpoint, cache8):
    """Train split, shuffled epoch: the cache is found by example id, not by batch position."""
    common = ["--distill-temperature", "2", "--distill-weight", "1", "--teacher-topk", "8",
              "--dropout", "0"]
    cfg, task, model = fairseq_setup(bible / "bin", "--criterion", "distillation_ce", *common,
                                     "--teacher-path", str(ls_checkpoint))
    live = task.build_criterion(cfg.criterion)
    cfg, _, _ = fairseq_setup(bible / "bin", "--criterion", "distillation_ce", *common,
                              "--teacher-cache", str(cache8))
    cached = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    itr = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=1500, seed=7,
                                  epoch=3).next_epoch_itr(shuffle=True)
    model.train()
    for i, sample in zip(range(3), itr):
        assert not torch.equal(sample["id"].sort().values, sample["id"])  # shuffled within too
        a, b = live(model, sample), cached(model, sample)
        assert b[0].item() == pytest.approx(a[0].item(), rel=1e-5)


def test_teacher_is_frozen_outside_the_criterion_and_follows_the_student(bible, ls_checkpoint):
    task, model, crit = setup(bible, "--teacher-path", f"{ls_checkpoint}:{ls_checkpoint}")
    assert len(crit.teachers) == 2
    assert list(crit.parameters()) == [] and len(crit.state_dict()) == 0
    sample = first_batch(task)
    model.train()
    loss, _, _ = crit(model, sample)
    loss.backward()
    for teacher in crit.teachers.models:
        assert not teacher.training
        assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None for p in model.parameters())
    # an ensemble of two identical teachers is that teacher
    single = criterion_for(bible, task, "--teacher-path", str(ls_checkpoint))
    model.eval()
    assert single(model, sample)[0].item() == pytest.approx(crit(model, sample)[0].item(), rel=1e-6)
    model.double()
    crit(model, sample)
    assert all(p.dtype == torch.float64 for t in crit.teachers.models for p in t.parameters())


def test_logged_gamma_and_soft_loss_are_summable(bible, ls_checkpoint):
    task, model, crit = setup(bible, "--teacher-path", str(ls_checkpoint),
                              "--distill-temperature", "3")
    model.eval()
    task.load_dataset("valid")
    batches = list(task.get_batch_iterator(dataset=task.dataset("valid"), max_tokens=1000,
                                           seed=1).next_epoch_itr(shuffle=False))[:2]
    logs = [crit(model, b)[2] for b in batches]
    with metrics.aggregate() as agg:
        type(crit).reduce_metrics(logs)
        derived = agg.get_smoothed_values()
    tokens = sum(b["ntokens"] for b in batches)
    gamma = sum(log["teacher_incorrect"] for log in logs) / tokens
    assert derived["teacher_gamma"] == pytest.approx(gamma, abs=1e-4)
    assert 0.0 < gamma < 1.05
    soft_bits = sum(log["soft_loss"].item() for log in logs) / tokens / np.log(2)
    assert derived["soft_loss"] == pytest.approx(soft_bits, abs=1e-3)
    assert "ece" in derived  # validation batches log calibration


# ---------------------------------------------------------------------------------------------
# training end to end
# ---------------------------------------------------------------------------------------------

def valid_losses(stdout: str) -> list[float]:
    return [float(m) for m in re.findall(r"valid on 'valid' subset \| loss ([0-9.]+)", stdout)]


@pytest.mark.parametrize("teacher_source", ["live", "cache"])
def test_students_learn_from_live_teacher_and_from_cache(bible, ls_checkpoint, cache8, tmp_path,
                                                         teacher_source):
    source = (["--teacher-path", str(ls_checkpoint)] if teacher_source == "live"
              else ["--teacher-cache", str(cache8), "--teacher-topk", "8"])
    result = fairseq_train(bible / "bin", tmp_path, *STUDENT, "--criterion", "distillation_ce",
                           *source, "--distill-temperature", "2", "--distill-weight", "0.5",
                           "--validate-interval-updates", "10", "--no-save", max_update=30)
    losses = valid_losses(result.stdout)
    assert len(losses) >= 3 and losses[-1] < losses[0] - 0.1, losses
    gammas = [float(g) for g in re.findall(r"teacher_gamma ([0-9.]+)", result.stdout)]
    assert gammas and all(0.0 < g < 1.05 for g in gammas)
    assert "soft_loss" in result.stdout and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit code 2
# ---------------------------------------------------------------------------------------------

def one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last
    for needle in needles:
        assert needle in last, last
    return last


def train_cli(bible, tmp_path, *args):
    return run([command("fairseq-train"), bible / "bin", "--user-dir", "ls_plugins", "--arch",
                "transformer", "--criterion", "distillation_ce", "--save-dir", tmp_path / "ck",
                "--cpu", "--max-tokens", "2000", *args], check=False)


@pytest.mark.parametrize("option,value,text", [
    ("--distill-weight", "1.5", "[0, 1]"), ("--distill-weight", "-0.1", "[0, 1]"),
    ("--distill-temperature", "0", "> 0"), ("--distill-temperature", "-1", "> 0"),
    ("--teacher-topk", "0", ">= 1"), ("--label-smoothing", "1", "[0, 1)")])
def test_bad_values_stop_while_parsing(bible, ls_checkpoint, capsys, option, value, text):
    with pytest.raises(SystemExit) as exit_info:
        fairseq_setup(bible / "bin", "--criterion", "distillation_ce", "--teacher-path",
                      str(ls_checkpoint), option, value)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and text in err[0] and value in err[0]


def test_bad_weight_on_the_command_line(bible, ls_checkpoint, tmp_path):
    one_line_error(train_cli(bible, tmp_path, "--teacher-path", ls_checkpoint,
                             "--distill-weight", "2"), "--distill-weight", "[0, 1]")
    assert not (tmp_path / "ck" / "checkpoint_last.pt").exists()


def test_mismatched_dictionaries_name_the_first_differing_symbol(bible, ls_checkpoint, tmp_path):
    other = tmp_path / "other_dict"
    other.mkdir()
    for lang in ("es", "en"):
        lines = (bible / "bin" / f"dict.{lang}.txt").read_text().splitlines()
        lines[10], lines[11] = lines[11], lines[10]
        (other / f"dict.{lang}.txt").write_text("\n".join(lines) + "\n")
    first, second = (line.split()[0] for line in lines[10:12])
    result = train_cli(bible, tmp_path, "--teacher-path", ls_checkpoint, "--teacher-data", other)
    last = one_line_error(result, "--teacher-path: must use the target dictionary of the student, "
                                  f"got {ls_checkpoint}, whose target dictionary differs at index "
                                  f"14: {first!r} instead of {second!r}")
    assert last.startswith("fairseq-train: error: --teacher-path: ")


def test_missing_and_unreadable_checkpoints(bible, tmp_path, capsys):
    one_line_error(train_cli(bible, tmp_path, "--teacher-path", tmp_path / "nope.pt"),
                   f"--teacher-path: must name an existing file, got {tmp_path / 'nope.pt'} "
                   f"(no such file)")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for spec, needle in [(str(garbage), f"--teacher-path: must be a fairseq checkpoint that torch "
                                        f"loads safely (weights_only), got {garbage} ("),
                         (str(tmp_path), f"--teacher-path: must name a file, got {tmp_path} "
                                         f"(a directory)")]:
        cfg, task, _ = fairseq_setup(bible / "bin", "--criterion", "distillation_ce",
                                     "--teacher-path", spec)
        with pytest.raises(SystemExit) as exit_info:
            task.build_criterion(cfg.criterion)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def build_error(bible, capsys, *args) -> str:
    cfg, task, _ = fairseq_setup(bible / "bin", "--criterion", "distillation_ce", *args)
    with pytest.raises(SystemExit) as exit_info:
        task.build_criterion(cfg.criterion)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_caches_and_k_are_refused(bible, ls_checkpoint, cache8, tmp_path, capsys):
    K = dictionary_size(bible)
    err = build_error(bible, capsys, "--teacher-path", str(ls_checkpoint), "--teacher-topk", str(K + 1))
    assert "--teacher-topk" in err and f"K={K}" in err
    err = build_error(bible, capsys, "--teacher-cache", str(cache8), "--teacher-topk", "9")
    assert "--teacher-topk" in err and "k=8" in err
    err = build_error(bible, capsys)
    assert "--teacher-path" in err and "--teacher-cache" in err
    # a cache with no valid split, used alone
    only_train = tmp_path / "only_train"
    shutil.copytree(cache8 / "train", only_train / "train")
    err = build_error(bible, capsys, "--teacher-cache", str(only_train))
    assert "--teacher-cache" in err and "'valid'" in err and "ls-cache-teacher" in err
    # a cache built for another split
    swapped = tmp_path / "swapped"
    shutil.copytree(cache8 / "valid", swapped / "train")
    shutil.copytree(cache8 / "valid", swapped / "valid")
    err = build_error(bible, capsys, "--teacher-cache", str(swapped))
    assert f"--teacher-cache: must be built for split 'train', got {swapped / 'train'} (built for " \
           f"split 'valid')" in err
    # a cache built with another target dictionary
    other = tmp_path / "other"
    shutil.copytree(cache8, other)
    for split in ("train", "valid"):
        symbols = (other / split / "target_dict.txt").read_text().split("\n")
        symbols[20] = "▁zzz"
        (other / split / "target_dict.txt").write_text("\n".join(symbols))
        manifest = json.loads((other / split / "manifest.json").read_text())
        manifest["target_dict_sha256"] = "0" * 64
        (other / split / "manifest.json").write_text(json.dumps(manifest))
    err = build_error(bible, capsys, "--teacher-cache", str(other))
    assert (f"--teacher-cache: must be built with the target dictionary of the student, got "
            f"{other / 'train'}, whose target dictionary differs at index 20: '▁zzz' instead of ") in err
    # the cache of one split passed instead of its parent
    err = build_error(bible, capsys, "--teacher-cache", str(cache8 / "train"))
    assert "pass its parent directory" in err


def test_cache_for_other_data_is_refused_at_the_first_batch(bible, ls_checkpoint, cache8, tmp_path, capsys):
    """Same split names and dictionary, other examples: the cached targets give it away."""
    wrong = tmp_path / "wrong"
    shutil.copytree(cache8, wrong)
    shutil.rmtree(wrong / "valid")
    shutil.copytree(cache8 / "train", wrong / "valid")
    manifest = json.loads((wrong / "valid" / "manifest.json").read_text())
    manifest["split"] = "valid"
    (wrong / "valid" / "manifest.json").write_text(json.dumps(manifest))
    task, model, crit = setup(bible, "--teacher-cache", str(wrong))
    model.eval()
    with pytest.raises(SystemExit):
        crit(model, first_batch(task))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--teacher-cache" in err[0] and "rebuild the cache" in err[0]


def test_cache_tool_refuses_bad_k(bible, ls_checkpoint, tmp_path, capsys):
    from ls_plugins.cache_teacher import main
    with pytest.raises(SystemExit) as exit_info:
        main([str(bible / "bin"), "--teacher-path", str(ls_checkpoint), "--out", str(tmp_path),
              "--topk", "0"])
    assert exit_info.value.code == 2
    assert "--topk: must be an integer >= 1" in capsys.readouterr().err
    K = dictionary_size(bible)
    result = run([command("ls-cache-teacher"), bible / "bin", "--teacher-path", ls_checkpoint,
                  "--out", tmp_path / "c", "--topk", K + 1], check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"ls-cache-teacher: error: --topk: must be <= K={K} (the target dictionary's size), "
        f"got {K + 1}"]
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("case", ["no --out", "--out a file", "--out unwritable", "--max-tokens",
                                  "--teacher-data", "--split"])
def test_cache_tool_bad_input_one_line_nothing_written(bible, ls_checkpoint, tmp_path, capsys,
                                                       case):
    """One line, exit code 2, nothing written: output paths are checked before anything is
    loaded (with a real write: as root os.access says yes to everything), the rest before
    the cache is written."""
    from ls_plugins.cache_teacher import main

    out, afile = tmp_path / "cache", tmp_path / "file"
    afile.write_text("keep")
    extra, message = {
        "no --out": ([], "the following arguments are required: --out"),
        "--out a file": (["--out", afile], f"--out: must name a directory, got {afile} (an "
                                           f"existing file)"),
        "--out unwritable": (["--out", "/proc/ls-cache"], "--out: must name a writable directory, "
                                                          "got /proc/ls-cache (cannot write in /proc)"),
        "--max-tokens": (["--out", out, "--max-tokens", "5"],
                         "--max-tokens: must be at least the longest example of 'valid' ("),
        "--teacher-data": (["--out", out, "--teacher-data", tmp_path],
                           f"--teacher-data: must name the directory holding the dictionaries of "
                           f"{ls_checkpoint}, got {tmp_path} ("),
        "--split": (["--out", out, "--split", "valid,nosuchsplit"],
                    f"--split: must name splits of {bible / 'bin'}, got nosuchsplit ("),
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        main([str(bible / "bin"), "--teacher-path", str(ls_checkpoint), "--split", "valid",
              "--no-progress-bar", *map(str, extra)])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ls-cache-teacher: error: {message}"), lines
    assert not out.exists() and afile.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
