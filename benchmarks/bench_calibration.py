#!/usr/bin/env python3
"""Calibration scoring cost (issue: token-level calibration).

Claims, measured side by side in one run:
1. ``fairseq-generate`` with ``--task translation_calibration --scoring calibration`` (the task's
   defaults) vs the stock ``--task translation --scoring sacrebleu``, same checkpoint, beam and
   data (a 2+2-layer, 128-wide model, 200 test verses): <= 1.15x on both figures, which are
   reported apart: ``ratio_generation_timer`` is fairseq's own timer (its "Translated ... in Xs"
   line: the inference steps, which hold our teacher-forced pass) and ``ratio_wall`` the wall
   time of the whole command.  One warm-up run per side, then rounds in which the sides
   alternate and which goes first alternates; median over rounds of the per-round ratio.
   (``bench_generate.py`` measures the same at the demo's size.)
2. ``CalibrationStats.update`` streamed over 2e5 predictions at K = 8192 and 1e7 at K = 10, in
   batches: wall time <= 1.5x one ``log_softmax`` pass over the same logits (warm-up, then
   rounds with the order rotating; median per-round ratio).
2b. Memory does not grow with N: in a fresh child process per (K, N), the peak resident memory
   (``VmHWM``, reset after a warm-up update) added while streaming N predictions through
   ``CalibrationStats.update`` in batches (new targets per batch), with glibc's mmap threshold
   fixed (``MALLOC_MMAP_THRESHOLD_``: otherwise heap fragmentation moves the peak by ~10 MiB
   from run to run, whatever N); the growth from the smallest
   to the largest N must stay <= 1 MiB (K = 10: N = 1e5 -> 1e7; K = 8192: N = 8192 -> 4e5).
   The same measurement with ``adaptive=True`` (which keeps every confidence: O(N)) is the
   control: it must grow by more, or the measurement could not see growth and the claim fails.
3. ``CalibrationStats.update`` with ``bootstrap=200`` vs ``bootstrap=0`` at K = 8192 (issue 12):
   time <= 1.5x.  Realistic: batches of 4000 tokens in sentences of 30 (group ids = sentence
   ids), and the worst case where every token is its own group (``groups=None``); toy: batches
   of 128 tokens in sentences of 16.  Both sides alternate over rounds after a warm-up; the
   figure is the median over rounds of the per-round ratio.

Usage: python benchmarks/bench_calibration.py [--skip-generate] [--only-bootstrap] [--skip-bootstrap]
       [--workdir DIR] [--rounds 4]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, alternate, emit, median_ratio, prepare_corpus, run  # noqa: E402

SMALL_MODEL = ["--task", "translation", "--arch", "transformer", "--share-all-embeddings",
               "--encoder-layers", "2", "--decoder-layers", "2", "--encoder-embed-dim", "128",
               "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "256",
               "--decoder-ffn-embed-dim", "256", "--encoder-attention-heads", "4",
               "--decoder-attention-heads", "4", "--optimizer", "adam", "--lr", "0.002",
               "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "100", "--max-tokens", "4000",
               "--seed", "1", "--cpu", "--no-progress-bar", "--no-epoch-checkpoints",
               "--disable-validation"]


def stream_claims(rounds: int = 5) -> None:
    import torch
    from ls_plugins.calibration import CalibrationStats

    for total, k, batch in ((200_000, 8192, 4096), (10_000_000, 10, 500_000)):
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(batch, k, generator=g) * 3
        target = torch.randint(0, k, (batch,), generator=g)
        n_batches = total // batch
        stats = CalibrationStats()

        def stream_update():
            for _ in range(n_batches):
                stats.update(logits, target)

        def stream_log_softmax():
            for _ in range(n_batches):
                torch.log_softmax(logits, dim=-1)

        seconds = alternate({"update": stream_update, "log_softmax": stream_log_softmax}, rounds)
        ratio = median_ratio(seconds["update"], seconds["log_softmax"])
        emit(f"CalibrationStats.update over {total:.0e} predictions at K={k} vs log_softmax",
             "<= 1.5", ratio <= 1.5, ratio=round(ratio, 3),
             measured="wall time in this process", rounds=rounds, warmup=1,
             batch=batch, seconds={name: round(statistics.median(v), 3)
                                   for name, v in seconds.items()})


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def child_state_memory(k: int, total: int, batch: int, adaptive: bool) -> None:
    """Print the peak RSS (MiB) streaming ``total`` predictions adds (VmHWM reset after warm-up)."""
    import torch
    from ls_plugins.calibration import CalibrationStats

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, k, generator=g) * 3
    targets = [torch.randint(0, k, (batch,), generator=g) for _ in range(4)]
    stats = CalibrationStats(adaptive=adaptive)
    stats.update(logits, targets[0])  # warm-up: lazy initialisation, first allocations
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    for i in range(total // batch):
        stats.update(logits, targets[i % len(targets)])
    print(json.dumps({"growth_mib": (_status_kib("VmHWM") - before) / 1024,
                      "predictions": stats.count()}), flush=True)


def state_memory_claims(limit_mib: float = 1.0) -> None:
    for k, batch, sizes in ((10, 100_000, (100_000, 1_000_000, 10_000_000)),
                            (8192, 4096, (8192, 65_536, 409_600))):
        growth = {}
        for adaptive in (False, True):
            for total in sizes:
                # a fixed glibc mmap threshold: large freed temporaries go back to the system
                # instead of fragmenting the heap, so the peak shows what is alive, not luck
                out = run([sys.executable, __file__, "--child-state-memory", k, total, batch,
                           int(adaptive)], extra_env={"MALLOC_MMAP_THRESHOLD_": "65536"}).stdout
                growth[adaptive, total] = json.loads(out.strip().splitlines()[-1])["growth_mib"]
        small, large = sizes[0], sizes[-1]
        ours = growth[False, large] - growth[False, small]
        control = growth[True, large] - growth[True, small]
        flat, sees_growth = ours <= limit_mib, control > limit_mib
        emit(f"CalibrationStats memory does not grow with N, K={k}: peak RSS growth from "
             f"N={small} to N={large}", f"<= {limit_mib} MiB (and the O(N) control > that)",
             flat and sees_growth, growth_mib=round(ours, 3), control_growth_mib=round(control, 2),
             control="CalibrationStats(adaptive=True), which keeps every confidence",
             measured="peak RSS (VmHWM, reset after a warm-up update) added while streaming N "
                      "predictions, one fresh child process per N, MALLOC_MMAP_THRESHOLD_=65536",
             peak_growth_mib_by_n={str(n): round(growth[False, n], 3) for n in sizes},
             control_peak_growth_mib_by_n={str(n): round(growth[True, n], 2) for n in sizes},
             batch=batch)


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
    for calibrate in (False, True):  # warm-up (page cache, first start of each configuration)
        generate(data, checkpoint, calibrate)
    for r in range(rounds):  # alternate, and alternate which side goes first
        for calibrate in ((False, True) if r % 2 == 0 else (True, False)):
            times[calibrate].append(generate(data, checkpoint, calibrate))
    gen_ratio = median_ratio([t[0] for t in times[True]], [t[0] for t in times[False]])
    wall_ratio = median_ratio([t[1] for t in times[True]], [t[1] for t in times[False]])
    emit("fairseq-generate with calibration scoring vs without (beam 5, 200 sentences)", "<= 1.15",
         max(gen_ratio, wall_ratio) <= 1.15, ratio_generation_timer=round(gen_ratio, 3),
         ratio_wall=round(wall_ratio, 3),
         measured={"ratio_generation_timer": "fairseq-generate's own timer ('Translated ... in "
                                             "Xs': its inference steps, our scoring included)",
                   "ratio_wall": "wall time of the whole command"},
         model="transformer 2+2 layers, d=128, 400 updates, 1000 pieces", rounds=rounds,
         warmup="one run per side",
         calibration_options="the task's defaults",
         generation_timer_seconds={"with": [round(t[0], 2) for t in times[True]],
                                   "without": [round(t[0], 2) for t in times[False]]},
         wall_seconds={"with": [round(t[1], 2) for t in times[True]],
                       "without": [round(t[1], 2) for t in times[False]]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-generate", action="store_true", help="only the streaming claims")
    parser.add_argument("--only-bootstrap", action="store_true",
                        help="only the bootstrap claim (issue 12)")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse data/model here")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating fairseq-generate runs per side (medians compared)")
    parser.add_argument("--skip-bootstrap", action="store_true", help="not the bootstrap claim")
    parser.add_argument("--child-state-memory", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_state_memory:
        k, total, batch, adaptive = args.child_state_memory
        child_state_memory(k, total, batch, bool(adaptive))
        return
    if not args.skip_bootstrap:
        bootstrap_claims()
    if args.only_bootstrap:
        return
    stream_claims()
    state_memory_claims()
    if not args.skip_generate:
        generate_claim(args.workdir or Path(tempfile.mkdtemp(prefix="ls-bench-")), args.rounds)


if __name__ == "__main__":
    main()
