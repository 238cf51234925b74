#!/usr/bin/env python3
"""Training step time of one student: smoothed_ce vs distillation_ce (live teacher) vs a top-8 cache.

Claim (issue 5, "Knowledge distillation"): a training step from a top-8 teacher cache costs at
most 1.15x a plain ``smoothed_ce`` step, at the same label smoothing (alpha = ``--alpha``, 0.1 by
default, on every side: the hard-target term of ``distillation_ce`` is smoothed exactly as the
baseline's loss); checked at T = 2, where the soft term needs a second softmax over the vocabulary
(T = 1 and the live teacher are reported beside it).  Two sizes:

- *toy*: a 1+1-layer, 64-wide student on a 2000-pair corpus (1000 pieces), batches of 2000
  tokens, a 2+2-layer, 128-wide teacher: the output layer dominates the student's step, which
  makes the loss's share, and so the ratio, as large as it gets;
- *demo*: student and teacher of the demo's size (3+3 layers, d = 256, FFN 512, 4 heads) on the
  demo's corpus (4000 pieces; ``common.demo_corpus``), batches of 6000 tokens as the demo trains.
  The cache is of the 500 validation verses, which the student trains on here
  (``--train-subset valid``): a cache of the whole training split would take minutes to build
  and times the same.

Teachers are trained for 5 updates only: the step's cost does not depend on the weights.  All
modes run in one process on copies of the same student, the same batches and the same optimizer,
interleaved step by step with the order rotating (so that load from other processes hits all
modes alike), after a warm-up pass over the batches; per round, the mean step time over the
batches; the figure is the median over rounds of the per-round ratio.  Prints one JSON line per
size; what is measured is the wall time of ``zero_grad, criterion(model, sample), backward,
optimizer.step`` in this process.

    python benchmarks/bench_distillation.py [--sizes toy,demo] [--rounds 7] [--batches 12]
           [--demo-rounds 3] [--demo-batches 3] [--alpha 0.1] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH_WORK, BIN, DEMO_MODEL, DEMO_MODEL_NAME, REPO, demo_corpus, emit,  # noqa: E402
                    median_ratio, run)

OPTIM = ["--optimizer", "adam", "--lr", "0.001", "--seed", "1", "--cpu", "--dropout", "0.1"]
TOY_ARCH = ["--task", "translation", "--arch", "transformer", "--share-all-embeddings",
            "--encoder-attention-heads", "2", "--decoder-attention-heads", "2"]
TOY_STUDENT = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "64",
               "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
               "--decoder-ffn-embed-dim", "128"]
TOY_TEACHER = ["--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128",
               "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "256",
               "--decoder-ffn-embed-dim", "256"]
SIZES = {
    # size: (student args, teacher args, max tokens, split the student trains on, description)
    "toy": (TOY_ARCH + TOY_STUDENT, TOY_ARCH + TOY_TEACHER, 2000, "train",
            "student transformer 1+1 layers, d=64; teacher 2+2 layers, d=128; 1000 pieces"),
    "demo": (DEMO_MODEL, DEMO_MODEL, 6000, "valid",
             f"student and teacher: {DEMO_MODEL_NAME}; 4000 pieces; the 500 validation verses"),
}


def prepare(work: Path, size: str, data: Path | None):
    """(data dir, teacher checkpoint, cache dir, seconds to build the cache)."""
    _, teacher_args, max_tokens, split, _ = SIZES[size]
    if size == "demo":
        bin_dir = demo_corpus(data or BENCH_WORK)
    else:
        if data is None:
            data = work / "corpus"
            run([sys.executable, REPO / "scripts" / "prepare_bible.py", data, "--train-size",
                 "2000", "--valid-size", "100", "--test-size", "100", "--vocab-size", "1000",
                 "--binarize"])
        bin_dir = data / "bin"
    teacher_dir = work / f"teacher_{size}"
    # timing does not depend on the weights: a teacher after a few updates is enough
    run([BIN / "fairseq-train", bin_dir, "--user-dir", REPO / "ls_plugins", *teacher_args, *OPTIM,
         "--max-tokens", max_tokens, "--criterion", "smoothed_ce", "--max-update", "5",
         "--save-dir", teacher_dir, "--no-epoch-checkpoints", "--no-progress-bar",
         "--disable-validation"])
    teacher = teacher_dir / "checkpoint_last.pt"
    cache = work / f"cache_{size}"
    start = time.perf_counter()
    run([BIN / "ls-cache-teacher", bin_dir, "--teacher-path", teacher, "--out", cache,
         "--split", split, "--topk", "8", "--max-tokens", max_tokens, "--cpu", "--no-progress-bar"])
    return bin_dir, teacher, cache, time.perf_counter() - start


def measure(size: str, bin_dir: Path, teacher: Path, cache: Path, cache_seconds: float,
            alpha: float, rounds: int, n_batches: int) -> None:
    import torch
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    student_args, _, max_tokens, split, description = SIZES[size]
    smoothing = ["--label-smoothing", str(alpha)]

    def config(*extra):
        parser = options.get_training_parser()
        ns = options.parse_args_and_arch(parser, [str(bin_dir), *student_args, *OPTIM,
                                                  "--max-tokens", str(max_tokens),
                                                  "--train-subset", split,
                                                  "--disable-validation", *extra])
        return convert_namespace_to_omegaconf(ns)

    modes = {
        "plain": ["--criterion", "smoothed_ce", *smoothing],
        "live": ["--criterion", "distillation_ce", "--teacher-path", str(teacher),
                 "--distill-weight", "0.5", "--distill-temperature", "2", *smoothing],
        "cache": ["--criterion", "distillation_ce", "--teacher-cache", str(cache),
                  "--teacher-topk", "8", "--distill-weight", "0.5", "--distill-temperature", "2",
                  *smoothing],
        # T = 1 (the paper's Fig. 5 label-smoothed teachers): no second softmax at T
        "cache_t1": ["--criterion", "distillation_ce", "--teacher-cache", str(cache),
                     "--teacher-topk", "8", "--distill-weight", "0.5", *smoothing],
    }
    cfg = config(*modes["plain"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset(split)
    torch.manual_seed(1)
    student = task.build_model(cfg.model)
    criteria = {name: task.build_criterion(config(*extra).criterion) for name, extra in modes.items()}
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=max_tokens,
                                  required_batch_size_multiple=1, seed=1).next_epoch_itr(shuffle=False)
    batches = [b for _, b in zip(range(n_batches), itr)]
    models = {name: copy.deepcopy(student) for name in modes}
    optimizers = {name: torch.optim.Adam(models[name].parameters(), lr=1e-3) for name in modes}

    def step(name, sample) -> float:
        model, optimizer, criterion = models[name], optimizers[name], criteria[name]
        start = time.perf_counter()
        optimizer.zero_grad()
        loss, _, _ = criterion(model, sample)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for model in models.values():
        model.train()
    order = list(modes)
    for sample in batches:  # warm-up (allocator, teacher placement, page cache)
        for name in order:
            step(name, sample)
    # interleaved step by step (the order rotates), so that load from other processes
    # falls on the modes alike; per round: mean step time over the batches
    times = {name: [] for name in modes}
    for r in range(rounds):
        total = dict.fromkeys(modes, 0.0)
        for b, sample in enumerate(batches):
            shift = (r + b) % len(order)  # rotate who goes first
            for name in order[shift:] + order[:shift]:
                total[name] += step(name, sample)
        for name in modes:
            times[name].append(total[name] / len(batches))
    ratio = {name: median_ratio(times[name], times["plain"]) for name in ("live", "cache", "cache_t1")}
    tokens = sum(int(b["ntokens"]) for b in batches) / len(batches)
    emit("distillation_ce training step from a top-8 teacher cache vs plain smoothed_ce, "
         "same label smoothing", "<= 1.15", ratio["cache"] <= 1.15, size=size,
         ratio=round(ratio["cache"], 3),
         ratio_of_medians=round(statistics.median(times["cache"]) / statistics.median(times["plain"]), 3),
         ratio_live_teacher=round(ratio["live"], 3), ratio_cache_at_t1=round(ratio["cache_t1"], 3),
         measured="wall time of one training step (zero_grad, loss, backward, Adam step) in this "
                  "process; per round the mean over the batches",
         step_ms={name: round(statistics.median(v) * 1e3, 2) for name, v in times.items()},
         label_smoothing=alpha, distill_weight=0.5, distill_temperature=2.0,
         tokens_per_batch=round(tokens, 1), vocab=len(task.target_dictionary), setting=description,
         rounds=rounds, batches_per_round=len(batches), warmup="one pass over the batches",
         cache_build_seconds=round(cache_seconds, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="toy,demo", help="comma-separated: toy, demo")
    parser.add_argument("--data", type=Path, default=None,
                        help="toy: a prepared corpus (scripts/prepare_bible.py --binarize; "
                             "default: make one); demo: the directory holding corpus/ "
                             "(default work/bench, built if absent)")
    parser.add_argument("--alpha", type=float, default=0.1, help="label smoothing, every side")
    parser.add_argument("--rounds", type=int, default=7, help="rounds at toy size")
    parser.add_argument("--batches", type=int, default=12, help="batches per round at toy size")
    parser.add_argument("--demo-rounds", type=int, default=3, help="rounds at demo size")
    parser.add_argument("--demo-batches", type=int, default=3, help="batches per round at demo size")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    if not sizes or set(sizes) - set(SIZES):
        parser.error("--sizes: toy, demo")
    logging.basicConfig(level=logging.WARNING)  # before fairseq's modules configure it at DEBUG
    warnings.filterwarnings("ignore")  # fairseq's and hydra's deprecation noise

    import torch

    import ls_plugins

    ls_plugins.register_fairseq()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_distill_") as tmp:
        for size in sizes:
            prepared = prepare(Path(tmp), size, args.data)
            rounds, batches = ((args.rounds, args.batches) if size == "toy"
                               else (args.demo_rounds, args.demo_batches))
            measure(size, *prepared, args.alpha, rounds, batches)


if __name__ == "__main__":
    main()
