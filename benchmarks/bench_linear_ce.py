#!/usr/bin/env python3
"""The fused output-layer loss (issue 14) against the unfused one: peak memory, time, words/s.

The loss step is forward + backward of label-smoothed cross entropy (alpha = 0.1, every 10th
token padding) from hidden states ``h`` (N x d) through an output layer ``W`` (V x d), ``b``:

* ``fused``:   ``linear_smoothed_cross_entropy(h, W, y, alpha, bias=b)`` (never N x V);
* ``unfused``: our criterion's current path: ``log_softmax(F.linear(h, W, b).float())`` then
  ``smoothed_nll_from_lprobs`` (what ``smoothed_ce`` does after ``model(...)``);
* ``fairseq``: the same logits through fairseq's ``label_smoothed_nll_loss`` (eps = alpha (V-1)/V,
  the same loss), as ``--criterion label_smoothed_cross_entropy`` does.

Claims (each printed as one JSON line):
1. peak memory of the step at N=8192, d=512, V=32768: fused <= 0.25x unfused and <= 0.25x
   fairseq.  Method: one fresh child process per variant; it builds the inputs (``h``, ``W``, ``b``
   with ``requires_grad``, targets), runs one warm-up step at a small N (so that torch's lazy
   initialisation is not counted), then resets the kernel's peak-RSS mark
   (``/proc/self/clear_refs`` = 5, Linux), runs the step once and reports ``VmHWM - VmRSS before
   the step``: everything the step allocates, gradients of ``h``, ``W``, ``b`` included, measured
   by the kernel (no sampling).  On CUDA: ``torch.cuda.max_memory_allocated`` growth instead.
2. time of the step, fused / unfused, at that size and at a toy size (N=2048, d=64, V=4096):
   warm-up, then ``--rounds`` rounds alternating the order of the two variants; the figure is the
   median of the per-round ratios.  <= 1.3 on CPU.
3. ``fairseq-train`` words/s with ``smoothed_ce --memory-efficient-output`` against without, on a
   synthetic corpus with a V=32768 joined dictionary (a 2+2-layer transformer, d=128, where the
   output layer dominates): ``--train-runs`` runs each, alternating; each run's median wps over
   its logging intervals after the first (warm-up); the ratio of the medians over runs.  >= 0.9.

Usage: python benchmarks/bench_linear_ce.py [--device cpu|cuda] [--rounds 5] [--toy-only]
       [--skip-train | --skip-kernel] [--workdir DIR] [--train-runs 2] [--train-updates 30]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, emit, run  # noqa: E402

ALPHA, PAD = 0.1, 1
VARIANTS = ("fused", "unfused", "fairseq")
REALISTIC = (8192, 512, 32768)
TOY = (2048, 64, 4096)


def loss_fn(variant: str):
    import torch.nn.functional as F
    if variant == "fused":
        from ls_plugins.linear_losses import linear_smoothed_cross_entropy
        return lambda h, w, b, y: linear_smoothed_cross_entropy(h, w, y, ALPHA, bias=b,
                                                                ignore_index=PAD)
    if variant == "unfused":
        from ls_plugins.losses import smoothed_nll_from_lprobs
        return lambda h, w, b, y: smoothed_nll_from_lprobs(
            F.log_softmax(F.linear(h, w, b).float(), -1), y, ALPHA, ignore_index=PAD)[0]
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    def fairseq_loss(h, w, b, y):
        lprobs = F.log_softmax(F.linear(h, w, b).float(), -1)
        return label_smoothed_nll_loss(lprobs, y.unsqueeze(-1), ALPHA * (w.size(0) - 1) / w.size(0),
                                       ignore_index=PAD)[0]
    return fairseq_loss


def inputs(n: int, d: int, v: int, device: str):
    import torch
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g).to(device).requires_grad_()
    weight = (torch.randn(v, d, generator=g) / d ** 0.5).to(device).requires_grad_()
    bias = torch.zeros(v).to(device).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g)
    target[::10] = PAD
    return hidden, weight, bias, target.to(device)


def step(fn, tensors) -> None:
    import torch
    hidden, weight, bias, target = tensors
    for x in (hidden, weight, bias):
        x.grad = None
    fn(hidden, weight, bias, target).backward()
    if hidden.is_cuda:
        torch.cuda.synchronize()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def child_peak_memory(variant: str, n: int, d: int, v: int, device: str) -> None:
    """Print the memory (MiB) the step adds above what the process holds just before it."""
    import torch
    fn = loss_fn(variant)
    step(fn, inputs(64, d, v, device))          # warm-up: lazy initialisation, small
    tensors = inputs(n, d, v, device)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, tensors)
        growth = torch.cuda.max_memory_allocated() - before
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                          # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        step(fn, tensors)
        growth = (_status_kib("VmHWM") - before) * 1024
    print(json.dumps({"peak_growth_mib": growth / 2**20}), flush=True)


def memory_claim(device: str) -> None:
    n, d, v = REALISTIC
    memory = {}
    for variant in VARIANTS:
        out = run([sys.executable, __file__, "--child-memory", variant, n, d, v,
                   "--device", device]).stdout
        memory[variant] = json.loads(out.strip().splitlines()[-1])["peak_growth_mib"]
    for other in ("unfused", "fairseq"):
        ratio = memory["fused"] / memory[other]
        emit(f"linear_smoothed_cross_entropy fwd+bwd N={n} d={d} V={v} peak memory vs {other} "
             f"({device})", "<= 0.25", ratio <= 0.25, ratio=round(ratio, 3),
             peak_growth_mib={k: round(m, 1) for k, m in memory.items()})


def time_claim(size: tuple[int, int, int], rounds: int, device: str, label: str) -> None:
    n, d, v = size
    tensors = inputs(n, d, v, device)
    fns = {name: loss_fn(name) for name in ("fused", "unfused")}
    for fn in fns.values():                       # warm-up
        step(fn, tensors)
    seconds = {name: [] for name in fns}
    for r in range(rounds):                       # alternate which variant goes first
        for name in (("fused", "unfused") if r % 2 == 0 else ("unfused", "fused")):
            start = time.perf_counter()
            step(fns[name], tensors)
            seconds[name].append(time.perf_counter() - start)
    ratios = [f / u for f, u in zip(seconds["fused"], seconds["unfused"])]
    ratio = statistics.median(ratios)
    target = 1.3
    emit(f"linear_smoothed_cross_entropy fwd+bwd time vs unfused, {label} N={n} d={d} V={v} "
         f"({device})", f"<= {target}", ratio <= target, ratio=round(ratio, 3),
         round_ratios=[round(x, 3) for x in ratios],
         median_seconds={k: round(statistics.median(t), 4) for k, t in seconds.items()})


# -- fairseq-train words/s ---------------------------------------------------------------------

def synthetic_corpus(out: Path, vocab: int = 32768, pairs: int = 4000) -> Path:
    """A binarised src->tgt corpus over a joined dictionary of exactly ``vocab`` symbols
    (4 specials + ``t0 ...``): Zipf-distributed source tokens, target = a fixed permutation of
    the reversed source (learnable, so the loss falls)."""
    data = out / "bin"
    if (data / "dict.tgt.txt").exists():
        return data
    out.mkdir(parents=True, exist_ok=True)
    words = vocab - 4
    (out / "dict.txt").write_text("".join(f"t{i} 1\n" for i in range(words)))
    rng = random.Random(0)
    weights = [1.0 / (i + 1) for i in range(words)]
    permutation = list(range(words))
    rng.shuffle(permutation)
    for split, count in (("train", pairs), ("valid", 100)):
        src, tgt = [], []
        for _ in range(count):
            tokens = rng.choices(range(words), weights, k=rng.randint(8, 30))
            src.append(" ".join(f"t{i}" for i in tokens))
            tgt.append(" ".join(f"t{permutation[i]}" for i in reversed(tokens)))
        (out / f"{split}.src").write_text("\n".join(src) + "\n")
        (out / f"{split}.tgt").write_text("\n".join(tgt) + "\n")
    run([BIN / "fairseq-preprocess", "--source-lang", "src", "--target-lang", "tgt",
         "--trainpref", out / "train", "--validpref", out / "valid", "--destdir", data,
         "--srcdict", out / "dict.txt", "--joined-dictionary", "--workers", "1"])
    return data


def fairseq_train_wps(data: Path, extra: list[str], updates: int) -> float:
    log_interval = 5
    args = [BIN / "fairseq-train", data, "--user-dir", "ls_plugins", "--task", "translation",
            "--arch", "transformer", "--share-all-embeddings", "--encoder-layers", "2",
            "--decoder-layers", "2", "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
            "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256",
            "--encoder-attention-heads", "4", "--decoder-attention-heads", "4",
            "--optimizer", "adam", "--lr", "0.001", "--lr-scheduler", "inverse_sqrt",
            "--warmup-updates", "20", "--max-tokens", "4096", "--seed", "1", "--cpu",
            "--max-update", updates + log_interval, "--no-save", "--disable-validation",
            "--log-format", "json", "--log-interval", log_interval,
            "--criterion", "smoothed_ce", "--label-smoothing", ALPHA, *extra]
    result = run(args)
    text = result.stdout + result.stderr
    wps = [float(m) for m in re.findall(r'"wps": "?([0-9.]+)', text)]
    if len(wps) < 2:
        raise RuntimeError(f"no train_inner wps in the fairseq-train log:\n{text[-2000:]}")
    return statistics.median(wps[1:])             # the first interval is the warm-up


def training_claim(workdir: Path, runs: int, updates: int) -> None:
    data = synthetic_corpus(workdir / "synthetic32k")
    results = {"fused": [], "unfused": []}
    for _ in range(runs):                         # alternate to even out machine load
        results["unfused"].append(fairseq_train_wps(data, [], updates))
        results["fused"].append(fairseq_train_wps(data, ["--memory-efficient-output"], updates))
    ratio = statistics.median(results["fused"]) / statistics.median(results["unfused"])
    emit("fairseq-train words/s smoothed_ce --memory-efficient-output vs without, V=32768 (cpu)",
         ">= 0.9", ratio >= 0.9, ratio=round(ratio, 3),
         wps={k: [round(x) for x in w] for k, w in results.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--toy-only", action="store_true",
                        help="only the toy-size timing (seconds; no realistic size)")
    parser.add_argument("--skip-train", action="store_true", help="no fairseq-train claim")
    parser.add_argument("--skip-kernel", action="store_true",
                        help="only the fairseq-train claim (no memory and time of the loss step)")
    parser.add_argument("--workdir", type=Path, default=None, help="reuse the synthetic corpus")
    parser.add_argument("--train-runs", type=int, default=2, help="fairseq-train runs per side")
    parser.add_argument("--train-updates", type=int, default=30,
                        help="measured updates per fairseq-train run (after 5 warm-up updates)")
    parser.add_argument("--child-memory", nargs=4, metavar=("VARIANT", "N", "D", "V"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        variant, *size = args.child_memory
        child_peak_memory(variant, *map(int, size), args.device)
        return
    if not args.skip_kernel:
        time_claim(TOY, max(args.rounds, 7), args.device, "toy")
        if args.toy_only:
            return
        memory_claim(args.device)
        time_claim(REALISTIC, args.rounds, args.device, "realistic")
    if not args.skip_train and args.device == "cpu":
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ls-bench-linear-"))
        training_claim(workdir, args.train_runs, args.train_updates)


if __name__ == "__main__":
    main()
