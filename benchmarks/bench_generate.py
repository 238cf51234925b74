#!/usr/bin/env python3
"""Cost of calibration scoring in fairseq-generate, and memory of the streamed temperature fit
(issue 12).

Claims, measured side by side in one run:
1. ``fairseq-generate --task translation_calibration --scoring calibration`` with both readings
   (reference and hypothesis) and ``--calibration-bootstrap 200`` vs the stock ``--task
   translation --scoring sacrebleu``: same checkpoint, data, beam (4), batching
   (``--max-tokens 6000 --required-batch-size-multiple 1``: both translate every sentence in the
   same batches): time <= 1.15x.  fairseq's own generation timer (its inference steps, which hold
   our scoring) and the command's wall time are both reported; the two sides alternate over
   rounds (which goes first alternates too) after a warm-up run each; the figure is the median
   over rounds of the per-round ratio.  ``--variants`` adds more sides (e.g. ``reference-b0``:
   the reference reading alone without intervals, the configuration of the earlier figure).
2. ``--calibration-fit-temperature``: the peak resident memory (``ru_maxrss`` of the process) of
   fairseq-generate over the first 100 and the first 400 test sentences, with and without the
   fit.  The fit streams (its state is a few floats), so the growth from 100 to 400 sentences
   must be the same with and without it (within 5 MB); keeping every token's log-probabilities
   (float16, as before issue 12) would have added ``2 bytes x vocabulary`` per token.

Sizes: ``demo`` is the demo's model (3+3 layers, 256 wide, 4 heads, ffn 512, shared
embeddings, ~4000 sentencepiece vocabulary) trained briefly (``--updates``, default 300) on the
whole Bible corpus, 500 test verses; ``toy`` is the tests' tiny model (1+1 layers, 64 wide,
800 vocabulary, 80 updates), 100 test verses.  Models and data are cached under ``--workdir``
(default ``work/bench``).

Usage: python benchmarks/bench_generate.py [--size demo|toy|both] [--rounds 3] [--skip-memory]
       [--variants both-b200,reference-b0] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BIN, REPO, emit, run  # noqa: E402

MODELS = {
    "demo": ["--encoder-layers", "3", "--decoder-layers", "3", "--encoder-embed-dim", "256",
             "--decoder-embed-dim", "256", "--encoder-ffn-embed-dim", "512",
             "--decoder-ffn-embed-dim", "512", "--encoder-attention-heads", "4",
             "--decoder-attention-heads", "4", "--dropout", "0.2", "--max-tokens", "6000",
             "--warmup-updates", "100", "--lr", "0.002"],
    "toy": ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "64",
            "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
            "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "2",
            "--decoder-attention-heads", "2", "--max-tokens", "2000", "--warmup-updates", "20",
            "--lr", "0.003"],
}
CORPUS = {"demo": ["--valid-size", "500", "--test-size", "500", "--vocab-size", "4000"],
          "toy": ["--train-size", "1500", "--valid-size", "100", "--test-size", "100",
                  "--vocab-size", "800"]}
UPDATES = {"demo": 300, "toy": 80}
VARIANTS = {
    "none": ["--task", "translation", "--scoring", "sacrebleu"],
    "both-b200": ["--task", "translation_calibration", "--scoring", "calibration",
                  "--calibration-mode", "both", "--calibration-bootstrap", "200"],
    "reference-b0": ["--task", "translation_calibration", "--scoring", "calibration",
                     "--calibration-mode", "reference", "--calibration-bootstrap", "0"],
}


def prepare(workdir: Path, size: str, updates: int) -> tuple[Path, Path]:
    """The corpus and a briefly trained model of ``size``, built once under ``workdir``."""
    corpus = workdir / ("corpus" if size == "demo" else f"corpus-{size}")
    if not (corpus / "bin" / "dict.en.txt").exists():
        run([sys.executable, REPO / "scripts" / "prepare_bible.py", corpus, *CORPUS[size],
             "--binarize"])
    save = workdir / ("model" if size == "demo" else f"model-{size}")
    checkpoint = save / "checkpoint_last.pt"
    if not checkpoint.exists():
        run([BIN / "fairseq-train", corpus / "bin", "--user-dir", "ls_plugins", "--task",
             "translation", "--arch", "transformer", "--share-all-embeddings", *MODELS[size],
             "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr-scheduler",
             "inverse_sqrt", "--max-update", str(updates), "--cpu", "--seed", "1",
             "--no-epoch-checkpoints", "--disable-validation", "--criterion", "smoothed_ce",
             "--label-smoothing", "0.1", "--save-dir", save])
    return corpus, checkpoint


def generate(data: Path, checkpoint: Path, *extra, subset: str = "test") -> dict:
    """One fairseq-generate run: its generation timer and wall time (seconds), the sentences it
    translated, and its peak resident memory (bytes, ``ru_maxrss`` of the process)."""
    args = [str(a) for a in (BIN / "fairseq-generate", data, "--user-dir", "ls_plugins",
                             "--path", checkpoint, "--beam", "4", "--max-tokens", "6000",
                             "--required-batch-size-multiple", "1", "--cpu", "--gen-subset",
                             subset, "--remove-bpe", "sentencepiece", "--max-len-a", "1.2",
                             "--max-len-b", "10", "--quiet", *extra)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        log.seek(0)
        stderr = log.read()
    if status != 0:
        raise RuntimeError(f"fairseq-generate failed:\n{stderr[-3000:]}")
    translated = re.search(r"Translated ([0-9,]+) sentences \([0-9,]+ tokens\) in ([0-9.]+)s", stderr)
    return {"generation": float(translated.group(2)), "wall": wall,
            "sentences": int(translated.group(1).replace(",", "")),
            "peak_rss": usage.ru_maxrss * 1024}  # kilobytes on Linux


def timing_claim(size: str, data: Path, checkpoint: Path, variants: list[str], rounds: int) -> None:
    sides = ["none", *variants]
    for side in sides:  # warm-up (page cache, first imports)
        generate(data, checkpoint, *VARIANTS[side])
    times = {side: [] for side in sides}
    for r in range(rounds):
        for side in (sides if r % 2 == 0 else list(reversed(sides))):
            times[side].append(generate(data, checkpoint, *VARIANTS[side]))
    sentences = {t["sentences"] for side in sides for t in times[side]}
    count = sentences.pop() if len(sentences) == 1 else sorted(sentences)
    for side in variants:
        gen = statistics.median(a["generation"] / b["generation"]
                                for a, b in zip(times[side], times["none"]))
        wall = statistics.median(a["wall"] / b["wall"] for a, b in zip(times[side], times["none"]))
        emit(f"fairseq-generate {side} vs no scoring ({size}, beam 4, {count} sentences)",
             "<= 1.15", max(gen, wall) <= 1.15, ratio_generation_timer=round(gen, 3),
             ratio_wall=round(wall, 3), rounds=rounds,
             seconds_generation={s: [round(t["generation"], 2) for t in times[s]] for s in (side, "none")},
             seconds_wall={s: [round(t["wall"], 2) for t in times[s]] for s in (side, "none")})


def subsets(corpus: Path, sizes: tuple[int, ...]) -> Path:
    """A data directory whose subsets ``n<N>`` hold the first N test sentences (same dictionary)."""
    out = corpus / "bench-subsets"
    missing = [n for n in sizes if not (out / f"n{n}.es-en.en.bin").exists()]
    if missing:
        text = corpus / "bench-subsets-text"
        text.mkdir(parents=True, exist_ok=True)
        for n in missing:
            for lang in ("es", "en"):
                lines = (corpus / "spm" / f"test.{lang}").read_text().splitlines()[:n]
                (text / f"n{n}.{lang}").write_text("\n".join(lines) + "\n")
        for n in missing:
            run([BIN / "fairseq-preprocess", "--source-lang", "es", "--target-lang", "en",
                 "--testpref", text / f"n{n}", "--destdir", out / "tmp", "--srcdict",
                 corpus / "bin" / "dict.es.txt", "--tgtdict", corpus / "bin" / "dict.en.txt",
                 "--workers", "1"])
            for suffix in ("es-en.es.bin", "es-en.es.idx", "es-en.en.bin", "es-en.en.idx"):
                os.replace(out / "tmp" / f"test.{suffix}", out / f"n{n}.{suffix}")
        for lang in ("es", "en"):
            (out / f"dict.{lang}.txt").write_bytes((corpus / "bin" / f"dict.{lang}.txt").read_bytes())
    return out


def memory_claim(size: str, corpus: Path, checkpoint: Path) -> None:
    sizes = (100, 400)
    data = subsets(corpus, sizes)
    calibrate = ["--task", "translation_calibration", "--scoring", "calibration",
                 "--calibration-mode", "reference", "--calibration-bootstrap", "0"]
    peaks = {}
    for fit in (False, True):
        for n in sizes:
            extra = calibrate + (["--calibration-fit-temperature"] if fit else [])
            peaks[fit, n] = generate(data, checkpoint, *extra, subset=f"n{n}")["peak_rss"]
    tokens = {n: sum(len(line.split()) + 1 for line in
                     (corpus / "spm" / "test.en").read_text().splitlines()[:n]) for n in sizes}
    vocabulary = len((corpus / "bin" / "dict.en.txt").read_text().splitlines()) + 4
    growth = {fit: peaks[fit, 400] - peaks[fit, 100] for fit in (False, True)}
    extra_growth = growth[True] - growth[False]
    mb = 1 << 20
    emit(f"fairseq-generate --calibration-fit-temperature: peak memory growth from 100 to 400 "
         f"sentences, with vs without the fit ({size})", "difference <= 5 MB",
         extra_growth <= 5 * mb, growth_with_fit_mb=round(growth[True] / mb, 1),
         growth_without_fit_mb=round(growth[False] / mb, 1),
         peak_mb={f"{'fit' if fit else 'no fit'}, {n} sentences": round(peaks[fit, n] / mb, 1)
                  for fit, n in peaks},
         reference_tokens=tokens,
         kept_logprobs_growth_mb_before_issue_12=round(
             2 * vocabulary * (tokens[400] - tokens[100]) / mb, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("demo", "toy", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="both-b200",
                        help=f"comma-separated scored sides, of {', '.join(VARIANTS)}")
    parser.add_argument("--updates", type=int, default=None, help="training updates if untrained")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--workdir", type=Path, default=REPO / "work" / "bench")
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    for size in (("toy", "demo") if args.size == "both" else (args.size,)):
        corpus, checkpoint = prepare(args.workdir, size, args.updates or UPDATES[size])
        if not args.skip_timing:
            timing_claim(size, corpus / "bin", checkpoint, variants, args.rounds)
        if not args.skip_memory and size == "demo":
            memory_claim(size, corpus, checkpoint)


if __name__ == "__main__":
    main()
