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
    report = (work / "report.md").read_text()
    assert "QUICK preset" in report
    for link in re.findall(r"\]\(([^)]+\.png)\)", report):
        png = work / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    numbers = []
    for path in work.rglob("*.json"):
        json_numbers(json.loads(path.read_text()), numbers)
    claims = json.loads((work / "claims.json").read_text())
    for verdict_path in ("claim1.fashion.verdict", "claim3.bleu_verdict", "claim4.translation.verdict"):
        value = claims
        for key in verdict_path.split("."):
            value = value[key]
        assert value in ("held", "not held", "inconclusive")
    missing = []
    for token in decimals_in_report(report):
        digits = len(token.split(".")[1])
        if not any(f"{abs(x):.{digits}f}" == token for x in numbers):
            missing.append(token)
    assert not missing, f"numbers in report.md found in no JSON file of the run: {missing}"
    # a re-run finds every stage done and rewrites nothing
    again = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), str(work),
                            "--preset", "quick"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0
    assert sum("done already" in line for line in again.stdout.splitlines()) == 12
