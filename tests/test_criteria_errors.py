"""Bad criterion options end in one line, exit code 2, and leave no --save-dir behind: from
fairseq-hydra-train (YAML config and command-line overrides) and from fairseq-train."""
import re

import pytest
import yaml

from conftest import REPO, command, run

# fairseq's own modules call logging.basicConfig at import time (one of them at DEBUG level), before
# any plugin is loaded: under fairseq-hydra-train those records reach stderr.  They are the only
# lines allowed besides our one error line.
FAIRSEQ_IMPORT_LOG = re.compile(r"^(INFO|DEBUG):(fairseq|hydra)[\w.]*:")


def hydra_config(bible, save_dir, **criterion) -> dict:
    """The tiny transformer of conftest.TINY_TRANSFORMER as a fairseq-hydra-train config."""
    layers = {"layers": 1, "embed_dim": 64, "ffn_embed_dim": 128, "attention_heads": 2}
    return {
        "common": {"user_dir": str(REPO / "ls_plugins"), "cpu": True, "seed": 1,
                   "no_progress_bar": True},
        "task": {"_name": "translation", "data": str(bible / "bin")},
        "model": {"_name": "transformer", "share_all_embeddings": True, "encoder": layers,
                  "decoder": layers},
        "criterion": {"_name": "smoothed_ce", "label_smoothing": 0.1, **criterion},
        "optimizer": {"_name": "adam"},
        "lr_scheduler": {"_name": "inverse_sqrt", "warmup_updates": 20},
        "optimization": {"lr": [0.003], "max_update": 2},
        "dataset": {"max_tokens": 2000},
        "checkpoint": {"save_dir": str(save_dir), "no_epoch_checkpoints": True},
    }


def hydra_train(tmp_path, config: dict, *overrides):
    config_dir = tmp_path / "conf"
    config_dir.mkdir(exist_ok=True)
    (config_dir / "run.yaml").write_text(yaml.safe_dump(config))
    # cwd: hydra writes its own run directory (outputs/DATE/TIME) there, whatever happens
    return run([command("fairseq-hydra-train"), "--config-dir", config_dir, "--config-name", "run",
                *overrides], check=False, cwd=tmp_path)


def assert_one_line(result, prog: str, message: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert lines and lines[-1] == f"{prog}: error: {message}", lines[-5:]
    others = [line for line in lines[:-1] if not FAIRSEQ_IMPORT_LOG.match(line)]
    assert others == [], others
    assert "Traceback" not in result.stderr + result.stdout


def test_hydra_yaml_config_with_bad_label_smoothing(bible, tmp_path):
    save_dir = tmp_path / "ck"
    result = hydra_train(tmp_path, hydra_config(bible, save_dir, label_smoothing=1.5))
    assert_one_line(result, "fairseq-hydra-train", "--label-smoothing: must be in [0, 1), got 1.5")
    assert not save_dir.exists()  # fairseq created it before building the criterion


@pytest.mark.parametrize("overrides,message", [
    (["criterion.label_smoothing=1.5"], "--label-smoothing: must be in [0, 1), got 1.5"),
    (["+criterion.smoothing_prior=bigram"],
     "--smoothing-prior: must be one of uniform, unigram, got 'bigram'"),
    (["+criterion.calibration_bins=0"], "--calibration-bins: must be an integer >= 1, got 0"),
    (["+criterion.calibration_bootstrap=-1"],
     "--calibration-bootstrap: must be an integer >= 0, got -1"),
    (["criterion._name=distillation_ce", "+criterion.distill_temperature=0"],
     "--distill-temperature: must be a finite number > 0, got 0.0"),
    (["criterion._name=distillation_ce", "+criterion.teacher_tail=x"],
     "--teacher-tail: must be one of uniform, drop, got 'x'"),
])
def test_hydra_overrides_with_bad_values(bible, tmp_path, overrides, message):
    save_dir = tmp_path / "ck"
    result = hydra_train(tmp_path, hydra_config(bible, save_dir), *overrides)
    assert_one_line(result, "fairseq-hydra-train", message)
    assert not save_dir.exists()


def test_hydra_bad_teacher_path(bible, tmp_path):
    save_dir = tmp_path / "ck"
    missing = tmp_path / "nope.pt"
    result = hydra_train(tmp_path, hydra_config(bible, save_dir), "criterion._name=distillation_ce",
                         f"+criterion.teacher_path={missing}")
    assert_one_line(result, "fairseq-hydra-train",
                    f"--teacher-path: must name an existing file, got {missing} (no such file)")
    assert not save_dir.exists()


def distill_train(bible, save_dir, *args):
    return run([command("fairseq-train"), bible / "bin", "--user-dir", "ls_plugins", "--arch",
                "transformer", "--criterion", "distillation_ce", "--save-dir", save_dir,
                "--cpu", "--max-tokens", "2000", *args], check=False)


def test_missing_teacher_is_refused_while_parsing(bible, tmp_path):
    save_dir = tmp_path / "ck" / "run1"
    missing = tmp_path / "nope.pt"
    result = distill_train(bible, save_dir, "--teacher-path", missing)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"fairseq-train: error: --teacher-path: must name an existing file, got {missing} "
        f"(no such file)"]
    assert not (tmp_path / "ck").exists()
    result = distill_train(bible, save_dir, "--teacher-cache", tmp_path / "no_cache")
    assert result.stderr.splitlines() == [
        f"fairseq-train: error: --teacher-cache: must name an existing directory, got "
        f"{tmp_path / 'no_cache'} (no such directory)"]
    assert not (tmp_path / "ck").exists()


def test_teacher_refused_after_fairseq_made_the_save_dir_leaves_none(bible, tmp_path):
    """A file that is no checkpoint is found out when the teacher loads, after fairseq created
    --save-dir (and its missing parents): both are removed; a save dir that existed is kept."""
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    result = distill_train(bible, tmp_path / "ck" / "run1", "--teacher-path", garbage)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fairseq-train: error: --teacher-path: ")
    assert str(garbage) in lines[0] and "Traceback" not in result.stdout
    assert not (tmp_path / "ck").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    result = distill_train(bible, existing, "--teacher-path", garbage)
    assert result.returncode == 2 and result.stderr.splitlines() == lines
    assert existing.is_dir()
