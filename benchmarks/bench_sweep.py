#!/usr/bin/env python3
"""Cost of ``ls-sweep`` (issue: beam-search temperature sweeps, paper Fig. 4).

Claims, measured side by side in one run (one JSON line each):

1. NLL+ECE for 10 temperatures from one teacher-forced pass (``sweep.calibration_by_temperature``:
   one forward pass per batch, the temperatures applied to the same logits) <= 1.5x the time of
   the same pass for a single temperature.  Sides alternate, median of ``--repeats``.  Measured
   on the tiny transformer the tests train (d = 64, 1 layer, 808 symbols) and on a model of
   transformer-base width (d = 512, FFN 2048, 2 + 2 layers; random weights: the cost of a pass
   does not depend on them) on the first batches of the same data.  Each extra temperature costs
   one exponential per logit; the forward pass costs about ``d`` multiply-adds per logit (the
   output projection alone), so the ratio falls with the model width.
2. A whole sweep, 8 temperatures x 1 model (``ls-sweep``, as users run it) <= 0.6x the time of 8
   separate ``fairseq-generate --temperature T --task translation_calibration --scoring
   calibration`` runs, same data, beam and batching: wall time of the commands, both with
   ``OMP_NUM_THREADS=--threads``.  Reported for ``--temperature-batch 1`` (BLEU identical to
   fairseq-generate) and ``--temperature-batch 8`` (one beam search for all temperatures).

Usage: python benchmarks/bench_sweep.py [--workdir DIR] [--threads 1] [--repeats 5] [--rounds 1]
       [--data DATA_BIN --checkpoint CKPT]   (default: a tiny corpus and model built in WORKDIR)
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, emit, run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_TRANSFORMER = [
    "--task", "translation", "--arch", "transformer", "--share-all-embeddings",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "64", "--decoder-embed-dim", "64",
    "--encoder-ffn-embed-dim", "128", "--decoder-ffn-embed-dim", "128",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
    "--optimizer", "adam", "--lr", "0.003", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", "20", "--max-tokens", "2000", "--seed", "1", "--cpu",
    "--no-progress-bar", "--no-epoch-checkpoints", "--disable-validation"]
BASE_WIDTH = ["--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "2",
              "--decoder-layers", "2", "--encoder-embed-dim", "512", "--decoder-embed-dim", "512",
              "--encoder-ffn-embed-dim", "2048", "--decoder-ffn-embed-dim", "2048",
              "--encoder-attention-heads", "8", "--decoder-attention-heads", "8"]
TEN = [0.5 + 0.15 * i for i in range(10)]
EIGHT = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5]
# the same decoding options on both sides of claim 2
GEN = ["--gen-subset", "valid", "--beam", "4", "--max-len-a", "1.2", "--max-len-b", "10",
       "--batch-size", "64", "--required-batch-size-multiple", "1", "--remove-bpe", "sentencepiece",
       "--cpu"]


def prepare(workdir: Path) -> tuple[Path, Path]:
    """The tests' corpus (1500 training pairs, 100 valid) and a tiny model (150 updates)."""
    corpus = workdir / "corpus"
    if not (corpus / "bin" / "dict.en.txt").exists():
        run([sys.executable, REPO / "scripts" / "prepare_bible.py", corpus, "--train-size", 1500,
             "--valid-size", 100, "--test-size", 100, "--vocab-size", 800, "--binarize"])
    checkpoint = workdir / "model" / "checkpoint_last.pt"
    if not checkpoint.exists():
        run([BIN / "fairseq-train", corpus / "bin", "--user-dir", REPO / "ls_plugins",
             *TINY_TRANSFORMER, "--criterion", "smoothed_ce", "--label-smoothing", "0.1",
             "--max-update", 150, "--save-dir", checkpoint.parent])
    return corpus / "bin", checkpoint


def alternate(sides: dict, repeats: int) -> dict:
    """Median wall time of each side, the sides run alternately (one warm-up each)."""
    times = {name: [] for name in sides}
    for i in range(repeats + 1):
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            if i:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def teacher_forced_claim(data: Path, checkpoint: Path, repeats: int) -> None:
    import torch
    from fairseq import options as fairseq_options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import ls_plugins
    from ls_plugins import sweep

    ls_plugins.register_fairseq()
    args = sweep.build_parser().parse_args([str(data), "--model", f"tiny={checkpoint}",
                                            "--output-dir", "unused", *GEN])
    cfg = sweep.fairseq_config(args)
    task = sweep.setup_task(cfg)
    tiny = sweep.load_models(sweep.parse_models(args.model), task, cfg)["tiny"]
    batches = sweep.load_batches(task, cfg, sweep.max_positions(task, tiny))
    pad = task.target_dictionary.pad()

    torch.manual_seed(0)
    train_args = fairseq_options.parse_args_and_arch(
        fairseq_options.get_training_parser(), [str(data), "--task", "translation", *BASE_WIDTH])
    base = task.build_model(convert_namespace_to_omegaconf(train_args).model).eval()
    base_batches = batches[:1]

    for name, models, subset in (("tiny (d=64, 1+1 layers)", tiny, batches),
                                 ("transformer-base width (d=512, 2+2 layers)", [base], base_batches)):
        times = alternate({
            "one": lambda: sweep.calibration_by_temperature(models, subset, [1.0], pad, 15),
            "ten": lambda: sweep.calibration_by_temperature(models, subset, TEN, pad, 15)}, repeats)
        ratio = times["ten"] / times["one"]
        tokens = sum(int(s["target"].ne(pad).sum()) for s in subset)
        emit("NLL+ECE for 10 temperatures in one teacher-forced pass vs 1 temperature",
             "ratio <= 1.5", ratio <= 1.5, model=name, ratio=round(ratio, 3),
             seconds_one=round(times["one"], 4), seconds_ten=round(times["ten"], 4),
             target_tokens=tokens, vocabulary=len(task.target_dictionary), repeats=repeats)


def sweep_claim(data: Path, checkpoint: Path, workdir: Path, rounds: int, threads: int) -> None:
    def timed(args) -> float:
        start = time.perf_counter()
        run(args)
        return time.perf_counter() - start

    def generate_runs() -> float:
        return sum(timed([BIN / "fairseq-generate", data, "--user-dir", REPO / "ls_plugins",
                          "--path", checkpoint, *GEN, "--temperature", t,
                          "--task", "translation_calibration", "--scoring", "calibration",
                          "--calibration-json", workdir / f"generate_{t}.json"]) for t in EIGHT)

    def ls_sweep(batch: int, round_: int) -> float:
        return timed([BIN / "ls-sweep", data, "--model", f"tiny={checkpoint}", *GEN,
                      "--temperatures", ",".join(map(str, EIGHT)), "--temperature-batch", batch,
                      "--no-progress-bar",  # a fresh directory: nothing to resume
                      "--output-dir", tempfile.mkdtemp(prefix=f"sweep_{batch}_{round_}_", dir=workdir)])

    results = {"generate": [], "sweep_batch1": [], "sweep_batch8": []}
    for r in range(rounds):
        results["generate"].append(generate_runs())
        results["sweep_batch1"].append(ls_sweep(1, r))
        results["sweep_batch8"].append(ls_sweep(8, r))
    generate = statistics.median(results["generate"])
    for key in ("sweep_batch1", "sweep_batch8"):
        seconds = statistics.median(results[key])
        emit("ls-sweep 8 temperatures x 1 model vs 8 fairseq-generate --temperature T runs "
             "with calibration scoring", "ratio <= 0.6", seconds / generate <= 0.6,
             temperature_batch=int(key[-1]), ratio=round(seconds / generate, 3),
             seconds_sweep=round(seconds, 2), seconds_generate_8_runs=round(generate, 2),
             options=" ".join(GEN), rounds=rounds, omp_threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="where the corpus, model and outputs go (default: temp)")
    parser.add_argument("--data", help="a fairseq data directory with a valid subset")
    parser.add_argument("--checkpoint", help="a checkpoint trained on --data")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, in-process and (OMP_NUM_THREADS) for the commands")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of claim 1 (median)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of claim 2 (median)")
    args = parser.parse_args()
    if (args.data is None) != (args.checkpoint is None):
        parser.error("--data and --checkpoint go together")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the commands of claim 2
    logging.basicConfig(level=logging.WARNING)  # before fairseq's modules configure it at DEBUG
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.data:
            data, checkpoint = Path(args.data), Path(args.checkpoint)
        else:
            data, checkpoint = prepare(workdir)
        teacher_forced_claim(data, checkpoint, args.repeats)
        sweep_claim(data, checkpoint, workdir, args.rounds, args.threads)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the commands of claim 2
    warnings.filterwarnings("ignore")  # fairseq's and hydra's deprecation noise
    main()
