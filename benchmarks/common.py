"""Helpers for the benchmark scripts: timing, peak memory in a child process, JSON lines, tiny data."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def emit(claim: str, target: str, passed: bool, **figures) -> None:
    """Print one JSON line per claim (and flush, so partial runs still report)."""
    import torch
    record = {"claim": claim, "target": target, "pass": bool(passed), **figures,
              "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(record), flush=True)


def run(args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True,
                          check=True, env=env, **kwargs)


def prepare_corpus(out: Path, train_size: int = 3000, vocab: int = 1000) -> Path:
    """A small real es->en Bible corpus (scripts/prepare_bible.py), reused if present."""
    if not (out / "bin" / "dict.en.txt").exists():
        run([sys.executable, REPO / "scripts" / "prepare_bible.py", out, "--train-size", train_size,
             "--valid-size", "200", "--test-size", "200", "--vocab-size", vocab, "--binarize"])
    return out
