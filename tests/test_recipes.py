"""The bash recipes: every one parses, and the demo (`make demo`'s main job) runs end to end."""
import json
import re
import shutil

import pytest

from conftest import REPO, run

RECIPES = sorted(str(p.relative_to(REPO)) for p in [*REPO.glob("examples/**/*.sh"),
                                                     *REPO.glob("scripts/*.sh")])


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_is_valid_bash(recipe):
    run([shutil.which("bash"), "-n", recipe])


FAKE_FAIRSEQ_TRAIN = """#!/usr/bin/env bash
# records its call, writes the checkpoints of a first epoch, then fails if asked to (an interruption)
save_dir=
while [ $# -gt 0 ]; do [ "$1" = --save-dir ] && save_dir=$2; shift; done
echo "$(basename "$save_dir")" >> "$CALLS"
touch "$save_dir/checkpoint_best.pt" "$save_dir/checkpoint_last.pt"
echo "epoch 001 | valid on 'valid' subset | loss 9.9"
[ "$(basename "$save_dir")" != "${INTERRUPT:-}" ] || exit 130
echo "done training"
"""


def test_interrupted_training_is_resumed_on_rerun_and_finished_one_skipped(tmp_path):
    """common.sh's train_hard_and_ls (demo.sh, sweep.sh; distill.sh uses the same train_once):
    a run interrupted after its first epoch has checkpoint_best.pt, yet must run again."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "fairseq-train").write_text(FAKE_FAIRSEQ_TRAIN)
    (fake_bin / "fairseq-train").chmod(0o755)
    calls, work = tmp_path / "calls", tmp_path / "work"

    def recipe(**env):
        script = "set -euo pipefail; source examples/translation/bible/common.sh; train_hard_and_ls \"$1\""
        result = run(["env", f"PATH={fake_bin}:/usr/bin:/bin", f"CALLS={calls}",
                      *(f"{k}={v}" for k, v in env.items()), shutil.which("bash"), "-c", script,
                      "recipe", work], check=False)
        ran = calls.read_text().split() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return result, ran

    result, ran = recipe(INTERRUPT="ls")
    assert result.returncode != 0 and ran == ["hard", "ls"]
    assert "training " in result.stderr and "ls failed" in result.stderr
    assert (work / "ls" / "checkpoint_best.pt").exists() and not (work / "ls" / ".done").exists()
    result, ran = recipe()
    assert result.returncode == 0 and ran == ["ls"], result.stderr  # resumed; hard was finished
    assert "resuming from checkpoint_last.pt" in result.stdout
    result, ran = recipe()
    assert result.returncode == 0 and ran == []
    assert (work / "ls" / "train.log").read_text().count("done training") == 1


def test_demo_runs_end_to_end_on_a_small_corpus(tmp_path):
    """The demo at toy size: prepare, train hard and LS with smoothed_ce, generate with
    calibration, temperature-scale the hard model, draw the comparison."""
    env = ["TRAIN_SIZE=800", "EVAL_SIZE=40", "VOCAB_SIZE=600", "MAX_EPOCH=1", "BEAM=2"]
    result = run(["env", *env, shutil.which("bash"), "examples/translation/bible/demo.sh",
                  tmp_path / "demo"])
    out = result.stdout
    assert len(re.findall(r"^Generate test with beam=2: BLEU = [0-9.]+", out, re.M)) == 3, out
    lines = re.findall(r"^Calibration \(reference\) \| T ([0-9.]+) \| bins 15 equal-width \| "
                       r"sentences \d+/\d+ \| tokens (\d+) \| ECE ([0-9.]+)", out, re.M)
    assert len(lines) == 3 and len({tokens for _, tokens, _ in lines}) == 1  # same test set
    hard = json.loads((tmp_path / "demo" / "hard" / "test.json").read_text())
    scaled = json.loads((tmp_path / "demo" / "hard" / "test_T.json").read_text())
    assert scaled["temperature"] == pytest.approx(round(hard["fitted_temperature"], 2))
    # temperature scaling at the NLL-optimal T cannot raise the NLL on the same set
    assert scaled["nll"] <= hard["nll"] + 1e-3
    for png in ("reliability.png", "hard/test.png", "ls/test.png"):
        assert (tmp_path / "demo" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
