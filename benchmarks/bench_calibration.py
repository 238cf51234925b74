#!/usr/bin/env python3
"""Calibration scoring cost (issue: token-level calibration).

Claims, measured side by side in one run:
1. ``fairseq-generate`` with ``--task translation_calibration --scoring calibration`` vs the stock
   ``--task translation --scoring sacrebleu``, same checkpoint, beam and data: wall time <= 1.15x.
   Both fairseq's own generation timer (inference_step, which includes our teacher-forced pass)
   and the whole command's wall time are reported; runs alternate.
2. ``CalibrationStats.update`` streamed over 2e5 predictions at K = 8192 and 1e7 at K = 10, in
   batches: time <= 1.5x one ``log_softmax`` pass over the same logits; its state does not grow
   with N (bytes of its tensors after 1 and after all batches).
3. ``CalibrationStats.update`` with ``bootstrap=200`` vs ``bootstrap=0`` at K = 8192 (issue 12):
   time <= 1.5x.  Realistic: batches of 4000 tokens in sentences of 30 (group ids = sentence
   ids), and the worst case where every token is its own group (``groups=None``); toy: batches
   of 128 tokens in sentences of 16.  Both sides alternate over rounds after a warm-up; the
   figure is the median over rounds of the per-round ratio.

Usage: python benchmarks/bench_calibration.py [--skip-generate] [--only-bootstrap] [--workdir DIR]
       [--rounds 4]
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, emit, prepare_corpus, run  # noqa: E402

SMALL_MODEL = ["--task", "translation", "--arch", "transformer", "--share-all-embeddings",
               "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128",
               "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "256",
               "--decoder-ffn-embed-dim", "256", "--encoder-attention-heads", "4",
               "--decoder-attention-heads", "4", "--optimizer", "adam", "--lr", "0.002",
               "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--max-tokens", "4000",
               "--seed", "1", "--cpu", "--no-progress-bar", "--no-epoch-checkpoints",
               "--disable-validation"]


def stream_claims() -> None:
    import torch
    from ls_plugins.calibration import CalibrationStats

    for total, k, batch in ((200_000, 8192, 4096), (10_000_000, 10, 500_000)):
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(batch, k, generator=g) * 3
        target = torch.randint(0, k, (batch,), generator=g)
        n_batches = total // batch

        def stream_update(stats):
            for _ in range(n_batches):
                stats.update(logits, target)

        def stream_log_softmax():
            for _ in range(n_batches):
                torch.log_softmax(logits, dim=-1)

        stats = CalibrationStats()
        stats.update(logits, target)
        state_one = sum(t.numel() * t.element_size() for t in (stats.counts, stats.conf_sums,
                                                               stats.correct_sums))
        update_s, softmax_s = [], []
        for _ in range(5):  # alternate (medians: 2 threads make single runs noisy)
            start = time.perf_counter()
            stream_log_softmax()
            softmax_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            stream_update(stats)
            update_s.append(time.perf_counter() - start)
        state_all = sum(t.numel() * t.element_size() for t in (stats.counts, stats.conf_sums,
                                                               stats.correct_sums))
        ratio = statistics.median(update_s) / statistics.median(softmax_s)
        emit(f"CalibrationStats.update over {total:.0e} predictions at K={k} vs log_softmax",
             "<= 1.5", ratio <= 1.5, ratio=round(ratio, 3),
             seconds={"update": round(statistics.median(update_s), 3),
                      "log_softmax": round(statistics.median(softmax_s), 3)},
             state_bytes_after_first_batch=state_one, state_bytes_after_all=state_all,
             predictions_seen=stats.count())


def bootstrap_claims(rounds: int = 7) -> None:
    import torch
    from ls_plugins.calibration import CalibrationStats

    k, replicates = 8192, 200
    for size, tokens, sentence, updates in (("realistic", 4000, 30, 3), ("realistic", 4000, None, 3),
                                            ("toy", 128, 16, 40)):
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(tokens, k, generator=g) * 3
        target = torch.randint(0, k, (tokens,), generator=g)
        groups = None if sentence is None else torch.arange(tokens) // sentence
        sides = {b: CalibrationStats(bootstrap=b, seed=1) for b in (0, replicates)}

        def timed(stats) -> float:
            start = time.perf_counter()
            for _ in range(updates):
                stats.update(logits, target, groups=groups)
            return time.perf_counter() - start

        for stats in sides.values():  # warm-up
            timed(stats)
        seconds = {b: [] for b in sides}
        for i in range(rounds):  # alternate, and alternate which side goes first
            for b in (sides if i % 2 == 0 else reversed(list(sides))):
                seconds[b].append(timed(sides[b]))
        ratio = statistics.median(a / b for a, b in zip(seconds[replicates], seconds[0]))
        grouping = "each token its own group" if sentence is None else f"sentences of {sentence}"
        emit(f"CalibrationStats.update bootstrap={replicates} vs bootstrap=0, K={k}, {size}: "
             f"batches of {tokens} tokens, {grouping}", "<= 1.5", ratio <= 1.5,
             ratio=round(ratio, 3),
             seconds_per_update={str(b): round(statistics.median(v) / updates, 4)
                                 for b, v in seconds.items()},
             rounds=rounds, replicate_state_bytes=sides[replicates].replicate_sums.numel() * 8)


def generate(data: Path, checkpoint: Path, calibrate: bool) -> tuple[float, float]:
    task = (["--task", "translation_calibration", "--scoring", "calibration"] if calibrate
            else ["--task", "translation", "--scoring", "sacrebleu"])
    start = time.perf_counter()
    out = run([BIN / "fairseq-generate", data, "--user-dir", "ls_plugins", "--path", checkpoint,
               "--beam", "5", "--max-tokens", "4000", "--cpu", "--gen-subset", "test",
               "--remove-bpe", "sentencepiece", "--max-len-a", "1.2", "--max-len-b", "10",
               "--quiet", *task]).stderr
    wall = time.perf_counter() - start
    generation = float(re.search(r"Translated [0-9,]+ sentences \([0-9,]+ tokens\) in ([0-9.]+)s",
                                 out).group(1))
    return generation, wall


def generate_claim(workdir: Path, rounds: int) -> None:
    data = prepare_corpus(workdir / "corpus") / "bin"
    save = workdir / "model"
    if not (save / "checkpoint_last.pt").exists():
        run([BIN / "fairseq-train", data, "--user-dir", "ls_plugins", *SMALL_MODEL, "--criterion",
             "smoothed_ce", "--label-smoothing", "0.1", "--max-update", "400", "--save-dir", save])
    checkpoint = save / "checkpoint_last.pt"
    times = {True: [], False: []}
    for _ in range(rounds):
        for calibrate in (False, True):
            times[calibrate].append(generate(data, checkpoint, calibrate))
    gen_ratio = (statistics.median(t[0] for t in times[True])
                 / statistics.median(t[0] for t in times[False]))
    wall_ratio = (statistics.median(t[1] for t in times[True])
                  / statistics.median(t[1] for t in times[False]))
    emit("fairseq-generate with calibration scoring vs without (beam 5, 200 sentences)", "<= 1.15",
         max(gen_ratio, wall_ratio) <= 1.15, ratio_generation_timer=round(gen_ratio, 3),
         ratio_wall=round(wall_ratio, 3),
         seconds={"with": [round(t[1], 2) for t in times[True]],
                  "without": [round(t[1], 2) for t in times[False]]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-generate", action="store_true", help="only the streaming claims")
    parser.add_argument("--only-bootstrap", action="store_true",
                        help="only the bootstrap claim (issue 12)")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse data/model here")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating fairseq-generate runs per side (medians compared)")
    args = parser.parse_args()
    bootstrap_claims()
    if args.only_bootstrap:
        return
    stream_claims()
    if not args.skip_generate:
        generate_claim(args.workdir or Path(tempfile.mkdtemp(prefix="ls-bench-")), args.rounds)


if __name__ == "__main__":
    main()
