"""`make demo`: knobs refused before any work; the whole demo at toy size (slow)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(*args, cwd=REPO):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["--preset", "huge"], "demo: error: --preset: must be one of full, quick, got 'huge'"),
    (["--preset"], "demo: error: --preset: expected one argument"),
    (["/proc/demo"], "demo: error: WORK: must name a writable directory, got /proc/demo "
                     "(cannot write in /proc)"),
])
def test_bad_preset_is_one_line_before_any_work(tmp_path, args, message):
    work = tmp_path / "work"
    result = run(sys.executable, REPO / "scripts" / "demo.py",
                 *(args if args[0].startswith("/") else [work, *args]))
    assert (result.returncode, result.stderr, result.stdout) == (2, message + "\n", "")
    assert not work.exists()


def test_a_work_directory_keeps_its_preset(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"preset": "quick"}))
    result = run(sys.executable, REPO / "scripts" / "demo.py", tmp_path, "--preset", "full")
    assert result.returncode == 2
    assert result.stderr == (f"demo: error: --preset: the preset {tmp_path} was started with "
                             "(quick); use another WORK, got full\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_make_demo_refuses_an_unknown_quick_value_before_setting_up(tmp_path):
    result = run("make", "-C", REPO, "demo", "QUICK=yes", f"VENV={tmp_path / 'venv'}")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("*** QUICK: 0 or 1, got yes.  Stop.")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "venv").exists()


def json_numbers(value, found: list) -> list:
    if isinstance(value, bool):
        return found
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            found.append(float(value))
    elif isinstance(value, dict):
        for item in value.values():
            json_numbers(item, found)
    elif isinstance(value, list):
        for item in value:
            json_numbers(item, found)
    return found


def decimals_in_report(text: str) -> list[str]:
    """Every number with a decimal point in the report (measured values, settings, times)."""
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", "", text)  # the date it was written
    text = re.sub(r"\d+(\.\d+){2,}", "", text)  # versions (strings in settings.json)
    return re.findall(r"\d+\.\d+", text)


@pytest.mark.slow
def test_quick_demo_writes_every_output_and_reports_only_numbers_of_its_json(tmp_path):
    work = tmp_path / "demo"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), str(work),
                             "--preset", "quick"], cwd=REPO, env=ENV, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    headers = [line for line in result.stdout.splitlines() if line.startswith("== [")]
    assert len(headers) == 12 and headers[-1].startswith("== [12/12] report")
    for stage in ("corpus", "train-hard", "train-ls", "generate", "sweep", "best-temperature",
                  "distill", "projection", "fashion", "fig5", "digits", "report"):
        assert json.loads((work / "stages" / f"{stage}.json").read_text())["seconds"] > 0
    check_report(work)
    # a re-run finds every stage done and rewrites nothing
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), str(work),
                            "--preset", "quick"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0
    assert sum("done already" in line for line in again.stdout.splitlines()) == 12


def check_report(work: Path) -> None:
    """report.md's figures exist, its numbers are claims.json's, and claims.json's are the
    stages' own (spot checks against the stages' JSON, sacrebleu and fairseq-generate)."""
    report = (work / "report.md").read_text()
    assert "QUICK preset" in report
    for link in re.findall(r"\]\(([^)]+\.png)\)", report):
        png = work / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    claims = json.loads((work / "claims.json").read_text())
    for verdict_path in ("claim1.fashion.verdict", "claim3.bleu_verdict", "claim4.translation.verdict"):
        value = claims
        for key in verdict_path.split("."):
            value = value[key]
        assert value in ("held", "not held", "inconclusive")
    # every number of the report is one of claims.json, as printed ...
    numbers = json_numbers(claims, [])
    missing = [token for token in decimals_in_report(report)
               if not any(f"{abs(x):.{len(token.split('.')[1])}f}" == token for x in numbers)]
    assert not missing, f"numbers in report.md found nowhere in claims.json: {missing}"
    # ... and claims.json's numbers are those of the stages' own outputs
    generated = work / "translation" / "generate"
    hard, ls = (json.loads((generated / f"{n}.json").read_text()) for n in ("hard", "ls"))
    reference = claims["claim1"]["translation"]["reference"]
    assert reference["hard"]["value"] == round(hard["ece"], 4)
    assert reference["hard"]["interval"] == [round(x, 4) for x in hard["intervals"]["ece"]]
    assert reference["hard_minus_ls"]["value"] == round(hard["ece"] - ls["ece"], 4)
    assert (claims["claim1"]["translation"]["hypothesis"]["ls"]["value"]
            == round(ls["hypothesis"]["ece"], 4))
    fashion = json.loads((work / "vision" / "fashion" / "mlp-ls0" / "metrics.json").read_text())
    assert claims["claim1"]["fashion"]["hard"]["value"] == round(fashion["final"]["test"]["ece"], 4)
    assert claims["claim2"]["fashion"]["temperature"] == round(fashion["final"]["temperature"], 3)
    # BLEU of the translations, against sacrebleu on the raw test references and the BLEU line
    # fairseq-generate printed
    import sacrebleu
    text = (generated / "ls-best-bleu.txt").read_text()
    hypotheses = dict(re.findall(r"^D-(\d+)\t[^\t]*\t(.*)$", text, re.M))
    references = (work / "translation" / "corpus" / "raw" / "test.en").read_text().splitlines()
    bleu = sacrebleu.corpus_bleu([hypotheses[str(i)] for i in range(len(references))],
                                 [references]).score
    assert claims["claim3"]["best"]["ls"]["value"] == round(bleu, 2)
    assert f"BLEU = {bleu:.2f}" in text
