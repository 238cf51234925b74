#!/usr/bin/env python3
"""``make demo``: the paper's five claims on offline data, stage by stage, then ``report.md``.

Translation (Bible es->en, Debian's SWORD modules) and vision (Fashion-MNIST and scikit-learn's
digits, Debian / bundled) with the stock commands: ``fairseq-train --criterion smoothed_ce``,
``fairseq-generate`` with both calibration readings and bootstrap intervals, ``ls-sweep``,
``ls-nmt-analysis``, ``ls-cache-teacher`` + ``distillation_ce``, ``ls-vision``.  Every stage
prints a one-line header, shows the commands' own progress, keeps their output in
``WORK/logs/`` and, when it succeeds, writes its completion stamp ``WORK/stages/NAME.json``
(with its wall time).  A re-run skips stamped stages and finishes the others: an interrupted
``fairseq-train`` resumes from its ``checkpoint_last.pt``, an interrupted ``ls-vision`` from its
``checkpoint.pt``.  The last stage, ``scripts/demo_report.py``, reads the JSON files the stages
wrote and writes ``WORK/claims.json`` and ``WORK/report.md``.

Presets: ``full`` (the default; about 40 minutes on 2 CPU cores) and ``quick`` (every stage at
toy size, a few minutes: checks the pipeline; its numbers are not meant to show anything).

Usage: python scripts/demo.py [WORK] [--preset full|quick]        (default WORK: work/demo)
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ls_plugins import cli  # noqa: E402  (stdlib only)

FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of every stage."""
    train_size: str               # Bible training pairs ("all": the ~11,300 left after held-out sets)
    eval_size: int                # valid and test verses
    vocab_size: int               # joint sentencepiece pieces
    model: tuple                  # fairseq-train architecture options of the two translation models
    max_epoch: int
    max_update: int               # 0: no limit
    max_len: tuple                # beam search's maximum length: a * source length + b
    sweep_temperatures: str
    bootstrap: int                # Poisson bootstrap replicates of every interval
    student: tuple                # distilled students' architecture
    student_epochs: int
    topk: int                     # teacher cache: classes kept per position
    projection_per_token: int
    fashion_epochs: int           # the calibration pair (no augmentation)
    mi_epochs: int                # the mutual-information pair (random shifts)
    mi_examples: int
    fig5_alphas: tuple
    fig5_teacher_epochs: int
    fig5_student_epochs: int
    digits_epochs: int


def transformer(layers: int, dim: int, ffn: int, heads: int) -> tuple:
    return ("--encoder-layers", layers, "--decoder-layers", layers, "--encoder-embed-dim", dim,
            "--decoder-embed-dim", dim, "--encoder-ffn-embed-dim", ffn,
            "--decoder-ffn-embed-dim", ffn, "--encoder-attention-heads", heads,
            "--decoder-attention-heads", heads)


PRESETS = {
    "full": Preset(train_size="all", eval_size=500, vocab_size=4000,
                   model=transformer(3, 256, 512, 4), max_epoch=4, max_update=0,
                   max_len=("--max-len-a", 1.2, "--max-len-b", 10),
                   sweep_temperatures="0.7,0.85,1,1.15,1.3,1.5", bootstrap=200,
                   student=transformer(2, 128, 256, 4), student_epochs=4, topk=8,
                   projection_per_token=300, fashion_epochs=8, mi_epochs=4, mi_examples=600,
                   fig5_alphas=(0.15, 0.3), fig5_teacher_epochs=8, fig5_student_epochs=4,
                   digits_epochs=40),
    "quick": Preset(train_size="1500", eval_size=60, vocab_size=1000,
                    model=transformer(1, 64, 128, 2), max_epoch=1, max_update=40,
                    max_len=("--max-len-a", 0, "--max-len-b", 20),  # untrained: short
                    sweep_temperatures="0.8,1,1.2", bootstrap=50,
                    student=transformer(1, 32, 64, 2), student_epochs=1, topk=4,
                    projection_per_token=50, fashion_epochs=1, mi_epochs=1, mi_examples=100,
                    fig5_alphas=(0.3,), fig5_teacher_epochs=1, fig5_student_epochs=1,
                    digits_epochs=3),
}
SEED = 1                 # training seeds and the bootstrap seed shared by every interval
BEAM = 4
GENERATION = ("--beam", BEAM, "--max-tokens", 6000, "--required-batch-size-multiple", 1,
              "--remove-bpe", "sentencepiece", "--cpu")
MLP = ("--dataset", "fashion-mnist", "--model", "mlp", "--optimizer", "adam", "--lr", 0.001,
       "--lr-scheduler", "step", "--batch-size", 128)


# fairseq-train's lines worth showing: its progress (every --log-interval updates), the end of
# each epoch, validation, the end
FAIRSEQ_PROGRESS = re.compile(rb"\| epoch \d+|valid on|done training|\| error|Error")


class StageFailed(RuntimeError):
    pass


class Demo:
    """The stages in order; each writes under ``work`` and stamps ``work/stages/NAME.json``."""

    def __init__(self, work: Path, preset_name: str):
        self.work, self.preset_name, self.p = work, preset_name, PRESETS[preset_name]
        self.corpus = work / "translation" / "corpus"
        self.data = self.corpus / "bin"
        self.env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.stages = [
            ("corpus", "translation: the es->en Bible corpus (sentencepiece, fairseq-preprocess)",
             self.corpus_stage),
            ("train-hard", "translation: fairseq-train --criterion smoothed_ce, hard targets",
             lambda: self.train_translation("hard", 0.0)),
            ("train-ls", "translation: fairseq-train --criterion smoothed_ce --label-smoothing 0.1",
             lambda: self.train_translation("ls", 0.1)),
            ("generate", "translation: fairseq-generate with both calibration readings, "
             "intervals, fitted T", self.generate_stage),
            ("sweep", "translation: ls-sweep over beam-search temperatures on valid (Fig. 4)",
             self.sweep_stage),
            ("best-temperature", "translation: fairseq-generate on test at each model's "
             "BLEU-best T on valid",
             self.best_temperature_stage),
            ("distill", "translation: students of each teacher at equal gamma (Fig. 5)",
             self.distill_stage),
            ("projection", "translation: decoder states at three frequent tokens (Fig. 1)",
             self.translation_projection_stage),
            ("fashion", "vision: Fashion-MNIST MLPs: alpha 0 and 0.05 (Fig. 1, 2), MI probe "
             "(Fig. 6)",
             self.fashion_stage),
            ("fig5", "vision: reduced Fig. 5 on Fashion-MNIST (teachers, students at equal gamma)",
             self.fig5_stage),
            ("digits", "vision: digits, the regime where hard targets are calibrated already",
             self.digits_stage),
            ("report", "report: claims.json and report.md from the stages' JSON",
             self.report_stage),
        ]

    # -- running ------------------------------------------------------------------------------
    def run(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "stages").mkdir(exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.write_settings()
        start = time.perf_counter()
        for number, (name, header, action) in enumerate(self.stages, 1):
            stamp = self.work / "stages" / f"{name}.json"
            prefix = f"== [{number}/{len(self.stages)}] {header}"
            if stamp.exists():
                seconds = json.loads(stamp.read_text())["seconds"]
                print(f"{prefix}: done already ({seconds:.0f} s)", flush=True)
                continue
            print(prefix, flush=True)
            began = time.perf_counter()
            action()
            write_json(stamp, {"stage": name, "header": header,
                               "seconds": round(time.perf_counter() - began, 1),
                               "finished": datetime.datetime.now().isoformat(timespec="seconds")})
        print(f"== demo finished ({time.perf_counter() - start:.0f} s in this run): "
              f"{self.work / 'report.md'}", flush=True)

    def command(self, log_name: str, *args) -> None:
        """Run a command, its whole output appended to ``logs/LOG_NAME.log``; fairseq's
        progress lines (and every line of our own commands) are shown.  A failure stops the demo
        naming the log."""
        args = [str(a) for a in args]
        log_path = self.work / "logs" / f"{log_name.replace('/', '-')}.log"
        shown = FAIRSEQ_PROGRESS if args[0].startswith("fairseq") else None
        with open(log_path, "ab") as log:
            log.write(("$ " + " ".join(args) + "\n").encode())
            log.flush()
            process = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT)
            for line in iter(process.stdout.readline, b""):
                log.write(line)
                if shown is None or shown.search(line):
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
            status = process.wait()
        if status != 0:
            raise StageFailed(f"{args[0] if args[0] != sys.executable else args[1]} failed "
                              f"(exit {status}): see {log_path}")

    def python(self, log_name: str, script: str, *args) -> None:
        self.command(log_name, sys.executable, REPO / script, *args)

    def write_settings(self) -> None:
        import platform
        from importlib import metadata
        versions = {}
        for package in ("torch", "torchvision", "fairseq-fixed", "sacrebleu", "sentencepiece",
                        "numpy", "ls_plugins"):
            try:
                versions[package] = metadata.version(package)
            except metadata.PackageNotFoundError:
                versions[package] = None
        write_json(self.work / "settings.json", {
            "preset": self.preset_name, "seed": SEED, "beam": BEAM,
            **{k: list(v) if isinstance(v, tuple) else v
               for k, v in dataclasses.asdict(self.p).items()},
            "python": platform.python_version(), "versions": versions,
            "cpu_count": os.cpu_count()})

    # -- translation --------------------------------------------------------------------------
    def corpus_stage(self) -> None:
        shutil.rmtree(self.corpus, ignore_errors=True)  # a half-written corpus of a killed run
        size = [] if self.p.train_size == "all" else ["--train-size", self.p.train_size]
        self.python("corpus", "scripts/prepare_bible.py", self.corpus, *size,
                    "--valid-size", self.p.eval_size, "--test-size", self.p.eval_size,
                    "--vocab-size", self.p.vocab_size, "--binarize")
        write_json(self.corpus / "corpus.json", {
            "source": "es (Reina-Valera 1909)", "target": "en (World English Bible)",
            "vocabulary": self.p.vocab_size,
            "pairs": {split: len((self.corpus / "raw" / f"{split}.en").read_text().splitlines())
                      for split in ("train", "valid", "test")}})

    def translation_dir(self, name: str) -> Path:
        return self.work / "translation" / name

    def checkpoint(self, name: str) -> Path:
        return self.translation_dir(name) / "checkpoint_best.pt"

    def fairseq_train(self, name: str, *options) -> None:
        """fairseq-train into translation/NAME; resumes from its checkpoint_last.pt."""
        limit = ("--max-update", self.p.max_update) if self.p.max_update else ()
        self.command(f"train-{name}", "fairseq-train", self.data, "--user-dir", "ls_plugins",
                     "--task", "translation", "--arch", "transformer", "--share-all-embeddings",
                     "--dropout", 0.2, "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)",
                     "--lr", 0.002, "--lr-scheduler", "inverse_sqrt", "--warmup-updates", 400,
                     "--max-tokens", 6000, "--cpu", "--seed", SEED, "--no-epoch-checkpoints",
                     "--log-format", "simple", "--log-interval", 25, *limit,
                     "--save-dir", self.translation_dir(name), *options)

    def train_translation(self, name: str, alpha: float) -> None:
        self.fairseq_train(name, *self.p.model, "--max-epoch", self.p.max_epoch,
                           "--criterion", "smoothed_ce", "--label-smoothing", alpha,
                           "--report-accuracy")

    def generate(self, log_name: str, checkpoint: Path, temperature: float, out: Path,
                 *extra) -> None:
        """fairseq-generate on test: both calibration readings with intervals (the same seed
        for every model: paired), the translations in OUT.txt, JSON and diagram beside."""
        out.parent.mkdir(parents=True, exist_ok=True)
        log = self.work / "logs" / f"{log_name}.log"
        args = ["fairseq-generate", self.data, "--user-dir", "ls_plugins",
                "--task", "translation_calibration", "--scoring", "calibration",
                "--path", checkpoint, "--gen-subset", "test", *GENERATION, *self.p.max_len,
                "--temperature", temperature, "--calibration-mode", "both",
                "--calibration-bootstrap", self.p.bootstrap, "--calibration-seed", SEED,
                "--calibration-json", out.with_suffix(".json"),
                "--calibration-plot", out.with_suffix(".png"), *extra]
        with open(out.with_suffix(".txt.tmp"), "wb") as text, open(log, "ab") as errors:
            status = subprocess.call([str(a) for a in args], cwd=REPO, env=self.env,
                                     stdout=text, stderr=errors)
        if status != 0:
            raise StageFailed(f"fairseq-generate failed (exit {status}): see {log}")
        os.replace(out.with_suffix(".txt.tmp"), out.with_suffix(".txt"))
        for line in out.with_suffix(".txt").read_text().splitlines():
            if line.startswith(("Generate test", "Calibration")):
                print(f"   {line}", flush=True)

    def generate_stage(self) -> None:
        generated = self.work / "translation" / "generate"
        for name in ("hard", "ls"):
            print(f"-- {name}, T = 1", flush=True)
            self.generate(f"generate-{name}", self.checkpoint(name), 1.0, generated / name,
                          "--calibration-fit-temperature")
        fitted = read_json(generated / "hard.json")["fitted_temperature"]
        print(f"-- hard at its fitted T = {fitted:.3f}", flush=True)
        self.generate("generate-hard-T", self.checkpoint("hard"), round(fitted, 3),
                      generated / "hard-fitted-T")

    def sweep_stage(self) -> None:
        self.command("sweep", "ls-sweep", self.data, "--model", f"hard={self.checkpoint('hard')}",
                     "--model", f"ls={self.checkpoint('ls')}",
                     "--temperatures", self.p.sweep_temperatures, "--gen-subset", "valid",
                     "--temperature-batch", len(self.p.sweep_temperatures.split(",")),
                     "--beam", BEAM, *self.p.max_len,
                     "--remove-bpe", "sentencepiece", "--max-tokens", 6000,
                     "--calibration-bootstrap", self.p.bootstrap, "--calibration-seed", SEED,
                     "--cpu", "--output-dir", self.work / "translation" / "sweep")

    def best_temperature_stage(self) -> None:
        """Each model's test translations at the T of its best BLEU in the sweep on valid (for
        the paired BLEU interval of claim 3); a model whose best T is 1 reuses its generate
        output."""
        generated = self.work / "translation" / "generate"
        for name, best in best_bleu_temperatures(self.work / "translation" / "sweep").items():
            out = generated / f"{name}-best-bleu"
            if best == 1.0:
                for suffix in (".txt", ".json", ".png"):
                    shutil.copyfile((generated / name).with_suffix(suffix), out.with_suffix(suffix))
                print(f"-- {name}: best BLEU at T = 1 (the generate stage's output)", flush=True)
                continue
            print(f"-- {name} at T = {best:g}", flush=True)
            self.generate(f"generate-{name}-best", self.checkpoint(name), best, out)

    def distill_stage(self) -> None:
        """The hard teacher at the T where its gamma on train equals the LS teacher's gamma at
        T = 1 (ls-nmt-analysis match-gamma); a top-k cache of each teacher at its T; a student
        distilled from each cache (beta = 1, the paper's Fig. 5); test BLEU of each student."""
        distill = self.work / "translation" / "distill"
        distill.mkdir(parents=True, exist_ok=True)
        match = distill / "match-gamma.json"
        if not match.exists():
            self.command("match-gamma", "ls-nmt-analysis", "match-gamma", self.data,
                         "--teacher-path", self.checkpoint("hard"),
                         "--gamma-from-teacher", self.checkpoint("ls"), "--split", "train",
                         "--tol", 1e-3, "--cpu", "--out", match)
        matched = read_json(match)
        print(f"-- LS teacher gamma {matched['target_gamma']:.4f} at T = 1; the hard teacher's "
              f"at T = {matched['temperature']:.3f}: {matched['gamma']:.4f} (train)", flush=True)
        for teacher, temperature in (("hard", matched["temperature"]), ("ls", 1.0)):
            cache = distill / f"cache-{teacher}"
            if not (cache / "valid" / "manifest.json").exists():
                self.command(f"cache-{teacher}", "ls-cache-teacher", self.data,
                             "--teacher-path", self.checkpoint(teacher), "--split", "train,valid",
                             "--topk", self.p.topk, "--temperature", temperature,
                             "--out", cache, "--cpu")
            student = f"distill/student-of-{teacher}"
            self.fairseq_train(student, *self.p.student, "--max-epoch", self.p.student_epochs,
                               "--criterion", "distillation_ce", "--teacher-cache", cache,
                               "--teacher-topk", self.p.topk, "--distill-temperature",
                               temperature, "--distill-weight", 1.0)
            self.generate(f"generate-student-of-{teacher}", self.checkpoint(student), 1.0,
                          distill / f"student-of-{teacher}")

    def translation_projection_stage(self) -> None:
        (self.work / "translation" / "projection").mkdir(parents=True, exist_ok=True)
        self.command("projection", "ls-nmt-analysis", "project", self.data,
                     "--model", f"hard={self.checkpoint('hard')}",
                     "--model", f"ls={self.checkpoint('ls')}", "--tokens", "▁the,▁of,▁and",
                     "--splits", "train,valid", "--max-per-token", self.p.projection_per_token,
                     "--seed", SEED, "--bootstrap", self.p.bootstrap, "--bootstrap-seed", SEED,
                     "--cpu", "--out", self.work / "translation" / "projection" / "fig1.png")

    # -- vision -------------------------------------------------------------------------------
    def ls_vision(self, run: str, *options) -> None:
        """``ls-vision`` into vision/RUN; continues from its checkpoint.pt if interrupted."""
        out = self.work / "vision" / run
        resume = ("--resume", out / "checkpoint.pt") if (out / "checkpoint.pt").exists() else ()
        self.command(f"vision-{run}", "ls-vision", "--data-dir", FASHION_DIR,
                     "--output-dir", out, "--seed", SEED, "--calibration-bootstrap",
                     self.p.bootstrap, "--calibration-seed", SEED, *resume, *options)

    def fashion_stage(self) -> None:
        """Calibration and the projection from MLPs trained without augmentation (the
        over-confident regime of paper Table 3); the mutual information from a second pair
        trained with random shifts (the probe's source of randomness) and alpha = 0.1."""
        vision = self.work / "vision" / "fashion"
        mlp = (*MLP, "--mlp-depth", 2, "--mlp-width", 512)
        for alpha in (0, 0.05):
            self.ls_vision(f"fashion/mlp-ls{alpha}", *mlp, "--epochs", self.p.fashion_epochs,
                           "--no-augment", "--label-smoothing", alpha)
        for alpha in (0, 0.1):
            self.ls_vision(f"fashion/mi-ls{alpha}", *mlp, "--epochs", self.p.mi_epochs,
                           "--augment", "--label-smoothing", alpha, "--mi-every", 1,
                           "--mi-classes", "0,6", "--mi-examples", self.p.mi_examples,
                           "--mi-augmentations", 8)
        runs = [vision / "mlp-ls0", vision / "mlp-ls0.05"]
        self.command("fashion-plots", "ls-vision", "plot", *runs,
                     "--out", vision / "reliability.png", "--title", "MLP / Fashion-MNIST (test)")
        self.command("fashion-plots", "ls-vision", "project", *runs, "--classes", "0,2,6",
                     "--max-per-class", 300, "--bootstrap", self.p.bootstrap,
                     "--bootstrap-seed", SEED, "--out", vision / "fig1.png")
        self.command("fashion-plots", "ls-vision", "plot-mi", vision / "mi-ls0",
                     vision / "mi-ls0.1", "--out", vision / "fig6.png")

    def fig5_stage(self) -> None:
        fig5 = self.work / "vision" / "fig5"
        teacher = (*MLP, "--mlp-depth", 2, "--mlp-width", 256, "--no-augment", "--quiet",
                   "--epochs", self.p.fig5_teacher_epochs)
        student = (*MLP, "--mlp-depth", 1, "--mlp-width", 64, "--no-augment", "--quiet",
                   "--epochs", self.p.fig5_student_epochs)
        for alpha in (0, *self.p.fig5_alphas):
            self.ls_vision(f"fig5/teacher-ls{alpha}", *teacher, "--label-smoothing", alpha)
        for alpha in self.p.fig5_alphas:  # the LS teacher's gamma at T = 1, then the hard
            self.ls_vision(f"fig5/student-ls-teacher{alpha}", *student,  # teacher's T for it
                           "--teacher", fig5 / f"teacher-ls{alpha}" / "checkpoint.pt",
                           "--distill-temperature", 1, "--distill-weight", 1)
            gamma = read_json(fig5 / f"student-ls-teacher{alpha}" / "metrics.json")["final"][
                "teacher_gamma"]
            self.ls_vision(f"fig5/student-hard-teacher-for-ls{alpha}", *student,
                           "--teacher", fig5 / "teacher-ls0" / "checkpoint.pt",
                           "--match-gamma", round(gamma, 4), "--distill-weight", 1)
        runs = sorted(str(p) for p in fig5.iterdir() if (p / "metrics.json").exists())
        self.command("fig5-plot", "ls-vision", "plot-fig5", *runs, "--out", fig5 / "fig5.png")

    def digits_stage(self) -> None:
        for alpha in (0, 0.1):
            self.ls_vision(f"digits/smallcnn-ls{alpha}", "--dataset", "digits", "--model",
                           "smallcnn", "--epochs", self.p.digits_epochs, "--label-smoothing",
                           alpha, "--quiet")

    def report_stage(self) -> None:
        self.python("report", "scripts/demo_report.py", self.work)


def best_bleu_temperatures(sweep_dir: Path) -> dict[str, float]:
    """Each model's T of highest BLEU in ``sweep.json`` (the lowest such T on a tie)."""
    best = {}
    for point in read_json(sweep_dir / "sweep.json")["points"]:
        model, bleu, temperature = point["model"], point["bleu"], point["temperature"]
        if model not in best or bleu > best[model][0]:
            best[model] = (bleu, temperature)
    return {model: temperature for model, (bleu, temperature) in best.items()}


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_json(path: Path, value) -> None:
    temporary = Path(f"{path}.tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def main(argv=None) -> None:
    parser = cli.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("work", nargs="?", default="work/demo",
                        help="where every stage writes (default work/demo)")
    parser.add_argument("--preset", type=cli.one_of("--preset", tuple(PRESETS)), default="full",
                        help="full (about 40 minutes on 2 CPU cores) or quick (toy sizes)")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    with cli.exit_on_usage_error():
        cli.check_output_dir("WORK", str(work))
        settings = work / "settings.json"
        started = read_json(settings).get("preset") if settings.exists() else None
        if started not in (None, args.preset):
            raise cli.bad_value("--preset", f"the preset {work} was started with ({started}); "
                                "use another WORK", args.preset)
        for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            if not (FASHION_DIR / name).exists():
                raise cli.bad_value("FASHION_MNIST_DIR", "a directory with Fashion-MNIST's idx "
                                    ".gz files (apt-get install dataset-fashion-mnist)",
                                    str(FASHION_DIR))
    try:
        Demo(work, args.preset).run()
    except StageFailed as failure:  # the commands' own errors are in the log it names
        print(f"{parser.prog}: error: {failure}", file=sys.stderr)
        raise SystemExit(1)

if __name__ == "__main__":
    main()
