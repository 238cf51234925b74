#!/usr/bin/env python3
"""Cost of ``ls-sweep`` (issue 4: beam-search temperature sweeps, paper Fig. 4).

Claims, measured side by side in one run (one JSON line each):

1. NLL+ECE for 10 temperatures from one teacher-forced pass (``sweep.calibration_by_temperature``:
   one forward pass per batch, the temperatures applied to the same logits) <= 1.5x the time of
   the same pass for a single temperature.  Sides alternate after a warm-up; median of the
   per-round ratios over ``--repeats`` rounds.  Measured on the tiny transformer the tests train
   (d = 64, 1 layer, 808 symbols), on a model of transformer-base width (d = 512, FFN 2048,
   2 + 2 layers; random weights: the cost of a pass does not depend on them) on the first batch of
   the same data, and on the demo's model (3 + 3 layers, d = 256, 4000 pieces) over its first
   ``DEMO_TF_BATCHES`` test batches.  Each extra temperature costs one exponential per logit; the
   forward pass costs about ``d`` multiply-adds per logit (the output projection alone), so the
   ratio falls with the model width.
2. A whole sweep, N temperatures x 1 model (``ls-sweep``) <= 0.6x the time of N separate
   generation runs ``fairseq-generate --temperature T --task translation_calibration --scoring
   calibration`` with the same work (same data, beam, batching and length limits; BLEU and both
   readings of calibration, reference and hypothesis, with ``--bootstrap`` replicates over
   sentences, 200 by default as both commands default to, same seed), wall time, against two
   baselines:

   - *commands*: ``ls-sweep`` and the N ``fairseq-generate`` commands as users run them, each a
     fresh process (start-up, imports and loading included on both sides);
   - *in-process*: one Python process runs the N generation loops (``fairseq_cli.generate.main``
     once per T: it loads the checkpoint and the data each time, as each command would, but pays
     the interpreter's and fairseq's start-up once) against ``ls_plugins.sweep_cli.main`` in the
     same process: what remains is the work the sweep shares between temperatures.

   Sizes: *toy*, the tests' tiny model on 100 validation verses, 8 temperatures; *demo*, a
   transformer of the demo's size (``common.demo_size_model``: 3 + 3 layers, d = 256, trained a
   few hundred updates) on the 500 test verses with the demo's decoding options (beam 4,
   --max-tokens 6000), ``--demo-temperatures`` temperatures (3 by default: one generation run
   there takes about two minutes on 2 loaded cores).
   Both ``--temperature-batch 1`` (BLEU identical to fairseq-generate) and ``--temperature-batch N``
   (one beam search for all temperatures) are reported.  Warm-up: every side once with the first
   temperature only (at demo size: on the toy model and data, the same code paths); then ``--rounds`` rounds, the order of the sides rotating; the figure is the
   median over rounds of the per-round ratio.

Usage: python benchmarks/bench_sweep.py [--sizes toy,demo] [--baselines commands,in-process]
       [--workdir DIR] [--threads 1] [--repeats 5] [--rounds 3] [--demo-rounds 2]
       [--demo-temperatures 0.5,1,2] [--demo-work work/bench] [--bootstrap 200]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH_WORK, BIN, DEMO_MODEL_NAME, alternate, demo_size_model, emit,  # noqa: E402
                    median_ratio, run)

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
DEMO_TF_BATCHES = 4
# the same decoding options on both sides of claim 2
TOY_GEN = ["--gen-subset", "valid", "--beam", "4", "--max-len-a", "1.2", "--max-len-b", "10",
           "--batch-size", "64", "--required-batch-size-multiple", "1",
           "--remove-bpe", "sentencepiece", "--cpu"]
# examples/translation/bible/demo.sh's fairseq-generate options
DEMO_GEN = ["--gen-subset", "test", "--beam", "4", "--max-tokens", "6000",
            "--required-batch-size-multiple", "1", "--max-len-a", "1.2", "--max-len-b", "10",
            "--remove-bpe", "sentencepiece", "--cpu"]


def prepare_toy(workdir: Path) -> tuple[Path, Path]:
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


def load_for_teacher_forcing(data: Path, checkpoint: Path, gen: list[str]):
    """(task, [model], batches, pad) as ls-sweep loads them."""
    from ls_plugins import sweep, sweep_cli

    args = sweep_cli.build_parser().parse_args([str(data), "--model", f"m={checkpoint}",
                                                "--output-dir", "unused", *gen])
    cfg = sweep_cli.fairseq_config(args)
    task = sweep.setup_task(cfg)
    models = sweep.load_models(sweep_cli.parse_models(args.model), task, cfg)["m"]
    batches = sweep.load_batches(task, cfg, sweep.max_positions(task, models))
    return task, models, batches, task.target_dictionary.pad()


def teacher_forced_claim(toy: tuple[Path, Path], demo: tuple[Path, Path] | None,
                         repeats: int) -> None:
    import torch
    from fairseq import options as fairseq_options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from ls_plugins import sweep

    task, tiny, batches, pad = load_for_teacher_forcing(*toy, TOY_GEN)
    vocabulary = len(task.target_dictionary)
    torch.manual_seed(0)
    train_args = fairseq_options.parse_args_and_arch(
        fairseq_options.get_training_parser(), [str(toy[0]), "--task", "translation", *BASE_WIDTH])
    base = task.build_model(convert_namespace_to_omegaconf(train_args).model).eval()
    cases = [("toy", "tiny (d=64, 1+1 layers)", tiny, batches, pad, vocabulary),
             ("realistic", "transformer-base width (d=512, 2+2 layers, random weights)", [base],
              batches[:1], pad, vocabulary)]
    if demo is not None:
        demo_task, demo_models, demo_batches, demo_pad = load_for_teacher_forcing(*demo, DEMO_GEN)
        cases.append(("demo", DEMO_MODEL_NAME, demo_models, demo_batches[:DEMO_TF_BATCHES],
                      demo_pad, len(demo_task.target_dictionary)))
    for size, name, models, subset, pad, vocabulary in cases:
        seconds = alternate({
            "one": lambda: sweep.calibration_by_temperature(models, subset, [1.0], pad, 15),
            "ten": lambda: sweep.calibration_by_temperature(models, subset, TEN, pad, 15)}, repeats)
        ratio = median_ratio(seconds["ten"], seconds["one"])
        tokens = sum(int(s["target"].ne(pad).sum()) for s in subset)
        emit("NLL+ECE for 10 temperatures in one teacher-forced pass vs 1 temperature",
             "ratio <= 1.5", ratio <= 1.5, size=size, model=name, ratio=round(ratio, 3),
             measured="wall time of sweep.calibration_by_temperature in this process",
             seconds_one=round(statistics.median(seconds["one"]), 4),
             seconds_ten=round(statistics.median(seconds["ten"]), 4),
             batches=len(subset), target_tokens=tokens, vocabulary=vocabulary, rounds=repeats,
             warmup=1)


# What a sweep point holds, computed on both sides: BLEU, the reference and the hypothesis
# readings of calibration at T, with bootstrap intervals over sentences (same replicates: same
# seed).  ``--bootstrap`` sets the replicates of both.
BOOTSTRAP = {"replicates": 200}


def same_work_options() -> list[str]:
    """fairseq-generate's calibration options that make it compute what a sweep point holds."""
    return ["--calibration-mode", "both", "--calibration-bootstrap", str(BOOTSTRAP["replicates"]),
            "--calibration-seed", "0"]


def generate_argv(data: Path, checkpoint: Path, gen: list[str], temperature: float,
                  json_path: Path) -> list[str]:
    """fairseq-generate doing the work of one sweep point: beam search at T, sacreBLEU, and both
    readings of calibration at T with their intervals."""
    return [str(data), "--user-dir", str(REPO / "ls_plugins"), "--path", str(checkpoint), *gen,
            "--temperature", str(temperature), "--task", "translation_calibration",
            "--scoring", "calibration", *same_work_options(), "--calibration-json", str(json_path)]


def sweep_argv(data: Path, checkpoint: Path, gen: list[str], temperatures, batch: int,
               output_dir: str) -> list[str]:
    return [str(data), "--model", f"m={checkpoint}", *gen,
            "--temperatures", ",".join(map(str, temperatures)), "--temperature-batch", str(batch),
            "--calibration-bootstrap", str(BOOTSTRAP["replicates"]), "--calibration-seed", "0",
            "--no-progress-bar", "--output-dir", output_dir]


def generate_in_process(argv: list[str]) -> None:
    from fairseq import options
    from fairseq_cli import generate

    args = options.parse_args_and_arch(options.get_generation_parser(), argv)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        generate.main(args)


def sweep_in_process(argv: list[str]) -> None:
    from ls_plugins import sweep_cli

    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        sweep_cli.main(argv)


def sweep_claim(size: str, data: Path, checkpoint: Path, gen: list[str], temperatures: list,
                workdir: Path, rounds: int, threads: int, baselines: list[str],
                model_name: str, warmup_on: tuple | None = None) -> None:
    """``warmup_on``: (data, checkpoint, gen) of a smaller setting that the warm-up runs instead
    (the same code paths, imports and files; a warm-up at the demo's size would cost a round)."""
    n = len(temperatures)
    outputs = workdir / f"outputs_{size}"
    outputs.mkdir(parents=True, exist_ok=True)

    def fresh(prefix: str) -> str:
        return tempfile.mkdtemp(prefix=prefix, dir=outputs)  # nothing to resume

    def sides_for(temps, data=data, checkpoint=checkpoint, gen=gen) -> dict:
        sides = {}
        batches = sorted({1, len(temps)})
        if "commands" in baselines:
            sides["commands_generate"] = lambda: [
                run([BIN / "fairseq-generate", *generate_argv(data, checkpoint, gen, t,
                                                              outputs / f"generate_{t}.json")])
                for t in temps]
            for b in batches:
                sides[f"commands_sweep_batch{b}"] = lambda b=b: run(
                    [BIN / "ls-sweep", *sweep_argv(data, checkpoint, gen, temps, b, fresh("s"))])
        if "in-process" in baselines:
            sides["in_process_generate"] = lambda: [
                generate_in_process(generate_argv(data, checkpoint, gen, t,
                                                  outputs / f"generate_{t}.json")) for t in temps]
            for b in batches:
                sides[f"in_process_sweep_batch{b}"] = lambda b=b: sweep_in_process(
                    sweep_argv(data, checkpoint, gen, temps, b, fresh("s")))
        return sides

    # warm-up: every side once, with the first temperature only (at full size) or all of them
    # (on the smaller setting)
    for side in (sides_for(temperatures, *warmup_on) if warmup_on
                 else sides_for(temperatures[:1])).values():
        side()
    seconds = alternate(sides_for(temperatures), rounds, warmup=0)
    batches = sorted({1, n})
    for baseline in baselines:
        prefix = baseline.replace("-", "_")
        generate = seconds[f"{prefix}_generate"]
        for b in batches:
            sweep = seconds[f"{prefix}_sweep_batch{b}"]
            ratio = median_ratio(sweep, generate)
            emit(f"ls-sweep {n} temperatures x 1 model vs {n} fairseq-generate --temperature T "
                 "runs with calibration scoring", "ratio <= 0.6", ratio <= 0.6, size=size,
                 baseline=baseline, temperature_batch=b, ratio=round(ratio, 3),
                 ratio_of_medians=round(statistics.median(sweep) / statistics.median(generate), 3),
                 measured=("wall time of the commands (fresh processes)" if baseline == "commands"
                           else "wall time in one process: fairseq_cli.generate.main once per T "
                                "vs ls_plugins.sweep_cli.main"),
                 seconds_sweep=[round(s, 2) for s in sweep],
                 seconds_generate_runs=[round(s, 2) for s in generate],
                 model=model_name, temperatures=temperatures, options=" ".join(gen),
                 generate_options="--task translation_calibration --scoring calibration "
                                  + " ".join(same_work_options()),
                 bootstrap_both_sides=BOOTSTRAP["replicates"],
                 rounds=rounds, warmup=("each side once on the toy model and data" if warmup_on
                                        else "each side once, first temperature only"),
                 omp_threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="where the toy corpus, model and outputs go (default: temp)")
    parser.add_argument("--sizes", default="toy,demo", help="comma-separated: toy, demo")
    parser.add_argument("--baselines", default="commands,in-process",
                        help="baselines of claim 2, comma-separated: commands, in-process")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads, in-process and (OMP_NUM_THREADS) for the commands")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of claim 1 (median)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of claim 2 at toy size")
    parser.add_argument("--demo-rounds", type=int, default=2, help="rounds of claim 2 at demo size")
    parser.add_argument("--demo-temperatures", default="0.5,1,2",
                        help="temperatures of claim 2 at demo size")
    parser.add_argument("--demo-work", type=Path, default=BENCH_WORK,
                        help="the demo-size corpus and model (built there if absent)")
    parser.add_argument("--skip-teacher-forced", action="store_true", help="only claim 2")
    parser.add_argument("--bootstrap", type=int, default=200,
                        help="bootstrap replicates of claim 2, both sides")
    args = parser.parse_args()
    BOOTSTRAP["replicates"] = args.bootstrap
    sizes = [s for s in args.sizes.split(",") if s]
    baselines = [b for b in args.baselines.split(",") if b]
    if set(sizes) - {"toy", "demo"} or set(baselines) - {"commands", "in-process"} or not baselines:
        parser.error("--sizes: toy, demo; --baselines: commands, in-process")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the commands of claim 2
    logging.basicConfig(level=logging.WARNING)  # before fairseq's modules configure it at DEBUG
    import torch

    import ls_plugins

    ls_plugins.register_fairseq()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        toy = prepare_toy(workdir)
        demo = None
        if "demo" in sizes:
            checkpoint = demo_size_model(args.demo_work)
            demo = (args.demo_work / "corpus" / "bin", checkpoint)
        if not args.skip_teacher_forced:
            teacher_forced_claim(toy, demo, args.repeats)
        if "toy" in sizes:
            sweep_claim("toy", *toy, TOY_GEN, EIGHT, workdir, args.rounds, args.threads, baselines,
                        "tiny (d=64, 1+1 layers), 100 validation verses")
        if demo is not None:
            temperatures = [float(t) for t in args.demo_temperatures.split(",")]
            sweep_claim("demo", *demo, DEMO_GEN, temperatures, workdir, args.demo_rounds,
                        args.threads, baselines, DEMO_MODEL_NAME + ", 500 test verses",
                        warmup_on=(*toy, TOY_GEN))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # the commands of claim 2
    warnings.filterwarnings("ignore")  # fairseq's and hydra's deprecation noise
    main()
