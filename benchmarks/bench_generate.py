#!/usr/bin/env python3
"""Cost of calibration scoring in fairseq-generate, and memory of the streamed temperature fit
(issue 12).

Claims, measured side by side in one run:
1. ``fairseq-generate --task translation_calibration --scoring calibration`` with both readings
   (reference and hypothesis) and ``--calibration-bootstrap 200`` vs the stock ``--task
   translation --scoring sacrebleu``: same checkpoint, data, beam (4), batching
   (``--max-tokens 6000 --required-batch-size-multiple 1``: both translate every sentence in the
   same batches): time <= 1.15x.  Measured two ways:
   a. interleaved, in one process: per batch, the stock task's ``inference_step`` (beam search)
      and then our scoring of its output (what our ``inference_step`` adds; the hypotheses are
      the same), so load from other processes falls on both alike; ratio
      ``(beam + scoring) / beam`` per pass over the test set, median over ``--rounds`` passes
      after a warm-up pass.  This is the ratio of fairseq's generation timer.
   b. the two commands, alternating over rounds (which goes first alternates too) after a
      warm-up run each: fairseq's generation timer and the wall time, median of per-round
      ratios.  On a shared machine this one is at the mercy of other processes' load.
   ``--variants`` adds more command-line sides (e.g. ``reference-b0``: the reference reading
   alone without intervals, the configuration of the earlier figure).
2. ``--calibration-fit-temperature``: the peak resident memory (VmHWM) of fairseq-generate
   over the first 100 and the first 400 test sentences in batches of 25 sentences (the same
   batch shapes, so the growth is what accumulates), with and without the fit.  The fit streams
   (its state is a few floats): the growth must be the same with and without it (within 5 MB);
   keeping every token's log-probabilities (float16, as before issue 12) would have added
   ``2 bytes x vocabulary`` per token.

Sizes: ``demo`` is the demo's model (3+3 layers, 256 wide, 4 heads, ffn 512, shared
embeddings, ~4000 sentencepiece vocabulary) trained briefly (``--updates``, default 300) on the
whole Bible corpus, 500 test verses; ``toy`` is the tests' tiny model (1+1 layers, 64 wide,
800 vocabulary, 80 updates), 100 test verses.  Models and data are cached under ``--workdir``
(default ``work/bench``).

Usage: python benchmarks/bench_generate.py [--size demo|toy|both] [--rounds 3] [--skip-memory]
       [--skip-timing] [--variants both-b200,reference-b0] [--workdir DIR]
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


# fairseq-generate's entry point, then the process's peak resident memory (VmHWM belongs to the
# address space that execve made: unlike ru_maxrss it does not inherit the parent's peak)
GENERATE_THEN_PEAK = """
import sys
from fairseq_cli.generate import cli_main
sys.argv[0] = "fairseq-generate"
try:
    cli_main()
finally:
    print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")), file=sys.stderr)
"""


def generation_args(data: Path, checkpoint: Path, *batching: str, subset: str) -> list:
    """The options every side shares: checkpoint, subset, beam, lengths and batching."""
    return [data, "--path", checkpoint, "--beam", "4", *batching, "--required-batch-size-multiple",
            "1", "--cpu", "--gen-subset", subset, "--max-len-a", "1.2", "--max-len-b", "10"]


def generate(data: Path, checkpoint: Path, *extra, subset: str = "test",
             batching=("--max-tokens", "6000")) -> dict:
    """One fairseq-generate run: its generation timer and wall time (seconds), the sentences it
    translated, and its peak resident memory (bytes, the process's VmHWM)."""
    args = [str(a) for a in (sys.executable, "-c", GENERATE_THEN_PEAK,
                             *generation_args(data, checkpoint, *batching, subset=subset), "--user-dir",
                             "ls_plugins", "--remove-bpe", "sentencepiece", "--quiet", *extra)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        status = subprocess.call(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
        wall = time.perf_counter() - start
        log.seek(0)
        stderr = log.read()
    if status != 0:
        raise RuntimeError(f"fairseq-generate failed:\n{stderr[-3000:]}")
    translated = re.search(r"Translated ([0-9,]+) sentences \([0-9,]+ tokens\) in ([0-9.]+)s", stderr)
    peak_kb = int(re.search(r"^VmHWM:\s+(\d+) kB", stderr, re.M).group(1))
    return {"generation": float(translated.group(2)), "wall": wall,
            "sentences": int(translated.group(1).replace(",", "")), "peak_rss": peak_kb * 1024}


def interleaved_claim(size: str, data: Path, checkpoint: Path, rounds: int) -> None:
    """Claim 1a: per batch, stock beam search then our scoring of its output, in one process.

    Set up as fairseq-generate sets itself up for the ``both-b200`` side (same parser, task,
    ensemble loading, batch iterator); per batch, the stock ``TranslationTask.inference_step``
    (beam search, what the ``none`` side runs) is timed, then the rest of our task's
    ``inference_step`` (``calibration.add_batch`` with the captured encoder outputs); after the
    pass, the scorer's end-of-run report (``calibration_report``: intervals from the replicates).
    Each pass starts from a copy of the task's empty statistics (same bootstrap seed)."""
    import copy

    from fairseq import checkpoint_utils, options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.tasks.translation import TranslationTask

    import ls_plugins

    ls_plugins.register_fairseq()
    argv = [str(a) for a in generation_args(data, checkpoint, "--max-tokens", "6000", subset="test")]
    argv += VARIANTS["both-b200"]
    parsed = options.parse_args_and_arch(options.get_generation_parser(), argv)
    cfg = convert_namespace_to_omegaconf(parsed)
    task = tasks.setup_task(cfg.task)
    models, _ = checkpoint_utils.load_model_ensemble([str(checkpoint)], task=task)
    for model in models:
        model.prepare_for_inference_(cfg)
    task.load_dataset(cfg.dataset.gen_subset, task_cfg=cfg.task)
    batches = list(task.get_batch_iterator(
        dataset=task.dataset(cfg.dataset.gen_subset), max_tokens=cfg.dataset.max_tokens,
        max_sentences=cfg.dataset.batch_size,
        max_positions=utils.resolve_max_positions(task.max_positions(),
                                                  *[m.max_positions() for m in models]),
        ignore_invalid_inputs=cfg.dataset.skip_invalid_size_inputs_valid_test,
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        seed=cfg.common.seed).next_epoch_itr(shuffle=False))
    generator = task.build_generator(models, cfg.generation)
    pad = task.target_dictionary.pad()
    empty = copy.deepcopy(task.calibration)
    passes = []
    for _ in range(rounds + 1):  # the first pass warms up
        task.calibration = copy.deepcopy(empty)
        beam = scored = 0.0
        for sample in batches:
            start = time.perf_counter()
            hypos = TranslationTask.inference_step(task, generator, models, sample)
            middle = time.perf_counter()
            task.calibration.add_batch(models, sample, hypos, task.temperature, pad,
                                       task.encoder_capture.take())
            scored += time.perf_counter() - middle
            beam += middle - start
        start = time.perf_counter()
        report = task.calibration_report()
        passes.append((beam, scored, time.perf_counter() - start))
    passes = passes[1:]
    ratio_timer = statistics.median((b + s) / b for b, s, _ in passes)
    ratio = statistics.median((b + s + r) / b for b, s, r in passes)
    emit(f"our scoring (both readings, B=200) added to beam search, interleaved per batch ({size}, "
         f"beam 4, {len(task.calibration.sentences)} sentences)", "<= 1.15", ratio <= 1.15,
         ratio=round(ratio, 3), ratio_generation_timer=round(ratio_timer, 3), rounds=rounds,
         batches=len(batches), measured="wall time in-process: (beam + scoring + report) / beam",
         seconds_beam=[round(b, 2) for b, _, _ in passes],
         seconds_scoring=[round(s, 2) for _, s, _ in passes],
         seconds_report=[round(r, 3) for _, _, r in passes],
         report_first_line=report.splitlines()[0])


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
            peaks[fit, n] = generate(data, checkpoint, *extra, subset=f"n{n}",
                                     batching=("--batch-size", "25"))["peak_rss"]
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
            interleaved_claim(size, corpus / "bin", checkpoint, args.rounds)
            timing_claim(size, corpus / "bin", checkpoint, variants, args.rounds)
        if not args.skip_memory and size == "demo":
            memory_claim(size, corpus, checkpoint)


if __name__ == "__main__":
    main()
