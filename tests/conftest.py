"""Shared fixtures: a small real es->en Bible corpus and tiny fairseq models trained on it.

Everything runs on CPU in seconds: a 1-layer transformer with 64-dim embeddings.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

TINY_TRANSFORMER = [
    "--task", "translation", "--arch", "transformer", "--share-all-embeddings",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
    "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--optimizer", "adam", "--lr", "0.003", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", "20", "--max-tokens", "2000", "--seed", "1", "--cpu",
    "--no-progress-bar", "--log-interval", "10", "--no-epoch-checkpoints",
]


def command(name: str) -> str:
    """Path of a console script installed next to this Python (fairseq-train, ls-sweep, ...)."""
    return str(BIN / name)


def run(args, check=True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command from the repository root, capturing text output."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    kwargs.setdefault("cwd", REPO)
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"command failed ({result.returncode}): {' '.join(map(str, args))}\n"
                             f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return result


def fairseq_train(data, save_dir, *extra, max_update=60, user_dir="ls_plugins") -> subprocess.CompletedProcess:
    """Train the tiny transformer with fairseq-train (our plugins via --user-dir)."""
    return run([command("fairseq-train"), data, "--user-dir", user_dir, *TINY_TRANSFORMER,
                "--max-update", str(max_update), "--save-dir", save_dir, *extra])


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one intra-op thread for a module (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``): tiny models gain nothing from intra-op
    threads, which spin badly on a loaded CPU."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bible(tmp_path_factory) -> Path:
    """A prepared corpus: raw/, spm/, spm.model and bin/ (fairseq binarised, joined dictionary)."""
    out = tmp_path_factory.mktemp("bible") / "corpus"
    run([sys.executable, REPO / "scripts" / "prepare_bible.py", out, "--train-size", "1500",
         "--valid-size", "100", "--test-size", "100", "--vocab-size", "800", "--binarize"])
    return out


@pytest.fixture(scope="session")
def ls_checkpoint(bible, tmp_path_factory) -> Path:
    """A tiny model trained with ``smoothed_ce --label-smoothing 0.1`` (80 updates)."""
    save_dir = tmp_path_factory.mktemp("ls_model")
    fairseq_train(bible / "bin", save_dir, "--criterion", "smoothed_ce", "--label-smoothing", "0.1",
                  max_update=80)
    return save_dir / "checkpoint_last.pt"


def numpy_calibration(probs: np.ndarray, target: np.ndarray, n_bins: int):
    """ECE/MCE/per-bin table by hand: bin i holds (i/n, (i+1)/n], bin 0 also holds 0."""
    confidence = probs.max(1)
    correct = (probs.argmax(1) == target).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ece, mce, table = 0.0, 0.0, []
    for i in range(n_bins):
        lower, upper = edges[i], edges[i + 1]
        inside = (confidence > lower) & (confidence <= upper)
        if i == 0:
            inside |= confidence == 0.0
        if inside.any():
            gap = abs(correct[inside].mean() - confidence[inside].mean())
            ece += inside.mean() * gap
            mce = max(mce, gap)
        table.append(int(inside.sum()))
    return ece, mce, table


def fairseq_setup(data, *extra):
    """In-process fairseq: (cfg, task, model) for the tiny transformer on ``data``, eval mode."""
    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import ls_plugins
    ls_plugins.register_fairseq()
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data), *TINY_TRANSFORMER, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(1)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    return cfg, task, model


def first_batch(task, split="valid", max_tokens=4000):
    """The first batch of ``split`` as fairseq builds it (sorted by length, unshuffled)."""
    task.load_dataset(split)
    iterator = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=max_tokens,
                                       seed=1).next_epoch_itr(shuffle=False)
    return next(iter(iterator))
