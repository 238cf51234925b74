"""Helpers for the benchmark scripts: alternating timing, JSON lines, the corpora and models."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the realistic corpus and model, shared by the scripts that need them (reused when present)
BENCH_WORK = REPO / "work" / "bench"
# examples/translation/bible/common.sh (train_hard_and_ls): the demo's transformer
DEMO_MODEL = ["--task", "translation", "--arch", "transformer", "--share-all-embeddings",
              "--encoder-layers", "3", "--decoder-layers", "3",
              "--encoder-embed-dim", "256", "--decoder-embed-dim", "256",
              "--encoder-ffn-embed-dim", "512", "--decoder-ffn-embed-dim", "512",
              "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]
DEMO_MODEL_NAME = "transformer 3+3 layers, d=256, FFN 512, 4 heads, shared embeddings (the demo's)"
DEMO_UPDATES = 300


def emit(claim: str, target: str, passed: bool, **figures) -> None:
    """Print one JSON line per claim (and flush, so partial runs still report)."""
    import torch
    record = {"claim": claim, "target": target, "pass": bool(passed), **figures,
              "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(record), flush=True)


def run(args, extra_env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           **(extra_env or {})}
    return subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True,
                          check=True, env=env, **kwargs)


def alternate(sides: dict[str, Callable[[], object]], rounds: int,
              warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each side per round: ``warmup`` untimed calls of every side first, then
    ``rounds`` rounds in which every side runs once, the order rotating from round to round (each
    side goes first equally often), so that load from other processes falls on all sides alike."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    seconds = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            sides[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of the per-round ratio (rounds paired: robust to drifting load)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def prepare_corpus(out: Path, train_size: int = 3000, vocab: int = 1000) -> Path:
    """A small real es->en Bible corpus (scripts/prepare_bible.py), reused if present."""
    if not (out / "bin" / "dict.en.txt").exists():
        run([sys.executable, REPO / "scripts" / "prepare_bible.py", out, "--train-size", train_size,
             "--valid-size", "200", "--test-size", "200", "--vocab-size", vocab, "--binarize"])
    return out


@contextlib.contextmanager
def _locked(work: Path):
    """One builder at a time in WORK (two benchmark scripts never train the same model at once)."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def demo_corpus(work: Path = BENCH_WORK) -> Path:
    """The demo's corpus (every training pair, 500 valid and 500 test verses, 4000 sentencepiece
    pieces) in WORK/corpus, built once; returns its fairseq data directory."""
    bin_dir = work / "corpus" / "bin"
    with _locked(work):
        if not (bin_dir / "dict.en.txt").exists():
            run([sys.executable, REPO / "scripts" / "prepare_bible.py", work / "corpus",
                 "--valid-size", 500, "--test-size", 500, "--vocab-size", 4000, "--binarize"])
    return bin_dir


def checkpoint_updates(path: Path) -> int:
    """Number of updates a fairseq checkpoint was saved after (0 when there is none)."""
    if not path.exists():
        return 0
    import torch

    import ls_plugins  # noqa: F401  (allowlists the globals of fairseq checkpoints)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return int(state["optimizer_history"][-1]["num_updates"])


def demo_size_model(work: Path = BENCH_WORK, updates: int = DEMO_UPDATES) -> Path:
    """A transformer of the demo's size trained with smoothed_ce (alpha 0.1) for ``updates``
    updates on :func:`demo_corpus` in WORK/model (resumed or reused; one builder at a time).
    Timing does not need a good model, only one whose hypotheses have sensible lengths (beam
    search on random weights runs to the maximum length)."""
    data = demo_corpus(work)
    checkpoint = work / "model" / "checkpoint_last.pt"
    with _locked(work):
        if checkpoint_updates(checkpoint) < updates:
            run([BIN / "fairseq-train", data, "--user-dir", REPO / "ls_plugins", *DEMO_MODEL,
                 "--dropout", "0.2", "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
                 "--lr", "0.002", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100",
                 "--max-tokens", "6000", "--max-update", updates, "--cpu", "--seed", "1",
                 "--no-epoch-checkpoints", "--disable-validation", "--log-format", "simple",
                 "--log-interval", "50", "--criterion", "smoothed_ce", "--label-smoothing", "0.1",
                 "--save-dir", checkpoint.parent])
    return checkpoint
