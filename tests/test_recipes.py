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


def test_demo_runs_end_to_end_on_a_small_corpus(tmp_path):
    """The demo at toy size: prepare, train hard and LS with smoothed_ce, generate with
    calibration, temperature-scale the hard model, draw the comparison."""
    env = ["TRAIN_SIZE=800", "EVAL_SIZE=40", "VOCAB_SIZE=600", "MAX_EPOCH=1", "BEAM=2"]
    result = run(["env", *env, shutil.which("bash"), "examples/translation/bible/demo.sh",
                  tmp_path / "demo"])
    out = result.stdout
    assert len(re.findall(r"^Generate test with beam=2: BLEU = [0-9.]+", out, re.M)) == 3, out
    lines = re.findall(r"^Calibration \| T ([0-9.]+) \| bins 15 \| tokens (\d+) \| ECE ([0-9.]+)",
                       out, re.M)
    assert len(lines) == 3 and len({tokens for _, tokens, _ in lines}) == 1  # same test set
    hard = json.loads((tmp_path / "demo" / "hard" / "test.json").read_text())
    scaled = json.loads((tmp_path / "demo" / "hard" / "test_T.json").read_text())
    assert scaled["temperature"] == pytest.approx(round(hard["fitted_temperature"], 2))
    # temperature scaling at the NLL-optimal T cannot raise the NLL on the same set
    assert scaled["nll"] <= hard["nll"] + 1e-3
    for png in ("reliability.png", "hard/test.png", "ls/test.png"):
        assert (tmp_path / "demo" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
