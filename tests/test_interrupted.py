"""Interrupted work: ls-sweep and ls-cache-teacher killed (SIGKILL) midway, then re-run with the
same command, give the same outputs as a run that was never interrupted."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import BIN, REPO, command, run

TEMPERATURES = "0.7,0.9,1,1.2,1.5"
GEN = ["--beam", "2", "--batch-size", "32", "--required-batch-size-multiple", "1", "--cpu",
       "--gen-subset", "valid", "--remove-bpe", "sentencepiece", "--max-len-b", "25", "--seed", "3",
       "--no-progress-bar", "--temperatures", TEMPERATURES]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One OpenMP thread per process: the same arithmetic in every run, and fast on busy cores."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def kill_when(args, ready, timeout=600.0) -> None:
    """Start ``args``, wait until ``ready()`` (polled), then SIGKILL it; it must still be running."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen([str(a) for a in args], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no progress to interrupt"
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be interrupted"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL


def finished_points(path) -> list:
    if not path.exists():
        return []
    points = []
    for line in path.read_text().splitlines():
        try:
            points.append(json.loads(line))
        except json.JSONDecodeError:  # a line the kill tore
            pass
    return points


def test_sweep_killed_midway_and_rerun_equals_an_uninterrupted_sweep(bible, ls_checkpoint,
                                                                      tmp_path):
    def sweep(out):
        return [command("ls-sweep"), bible / "bin", "--model", f"ls={ls_checkpoint}", *GEN,
                "--output-dir", out]

    run(sweep(tmp_path / "whole"))
    killed = tmp_path / "killed"
    kill_when(sweep(killed), lambda: len(finished_points(killed / "points.jsonl")) >= 1)
    done = finished_points(killed / "points.jsonl")
    assert 1 <= len(done) < 5 and not (killed / "sweep.json").exists()

    again = run(sweep(killed))
    assert f"reusing {len(done)} finished point(s)" in again.stderr
    assert len(finished_points(killed / "points.jsonl")) == 5  # the finished ones not recomputed
    for name in ("sweep.json", "sweep.csv", "sweep.png"):
        assert (killed / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert sorted(p.name for p in killed.iterdir()) == ["points.jsonl", "sweep.csv", "sweep.json",
                                                        "sweep.png"]


def test_cache_killed_midway_and_rerun_equals_an_uninterrupted_cache(bible, ls_checkpoint,
                                                                      tmp_path):
    def cache(out):
        return [command("ls-cache-teacher"), bible / "bin", "--teacher-path", ls_checkpoint,
                "--split", "train", "--topk", "4", "--max-tokens", "300", "--no-progress-bar",
                "--out", out]

    run(cache(tmp_path / "whole"))
    killed = tmp_path / "killed"

    def writing() -> bool:  # the cache's arrays exist in the temporary directory
        work = list(killed.glob(".tmp-train-*")) if killed.exists() else []
        return bool(work) and (work[0] / "values.npy").exists()

    kill_when(cache(killed), writing)
    left = [p.name for p in killed.iterdir()]
    assert len(left) == 1 and left[0].startswith(".tmp-train-"), left
    assert not (killed / "train").exists()  # a reader never sees half a cache

    run(cache(killed))
    assert sorted(p.name for p in killed.iterdir()) == ["train"]  # the stale work is gone
    whole, resumed = tmp_path / "whole" / "train", killed / "train"
    names = sorted(p.name for p in whole.iterdir())
    assert sorted(p.name for p in resumed.iterdir()) == names
    for name in names:
        if name == "manifest.json":
            ours, theirs = (json.loads((d / name).read_text()) for d in (resumed, whole))
            assert ours.pop("created") and theirs.pop("created")
            assert ours == theirs
        else:
            assert (resumed / name).read_bytes() == (whole / name).read_bytes(), name
    assert np.load(resumed / "present.npy").all()
