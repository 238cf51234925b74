"""A bad-input matrix over every command of ours: one case per bad value, each refused the same way.

Every case asserts the project's convention (DESIGN.md, "One command-line convention"): exit
status 2, exactly one line on stderr (the whole of stderr) that starts ``<prog>: error:`` and names
the option, no traceback, and nothing written: the case's output directory and its working
directory stay empty.

Speed: starting Python with torch and fairseq costs seconds, so each command runs in one server
process (this file run as a script) that imports the command's module once, as its console script
would, then forks one child per case.  A child's stdout and stderr are redirected to files at the
descriptor level before the command runs: what a case prints, it prints after the imports, and
all of it is counted.  The children keep Python's default warning filters plus the known
third-party warnings listed in pytest.ini (the only warnings a user may see besides ours).
"""
from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

if __name__ != "__main__":  # the server (below) needs none of the test machinery
    import pytest

    from conftest import BIN, REPO, TINY_TRANSFORMER, command, run


# -- the server: import once, fork per case -----------------------------------------------------

def _apply_known_warning_filters(ini_path: str) -> None:
    """pytest.ini's ``filterwarnings`` lines (action:message:category:module), in pytest's order."""
    import builtins
    import importlib
    import warnings

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini_path)
    lines = [line.strip() for line in parser.get("pytest", "filterwarnings", fallback="").splitlines()
             if line.strip()]
    for line in lines:
        action, message, category, module, *_ = (line.split(":", 4) + [""] * 4)[:5]
        if category:
            owner, _, name = category.rpartition(".")
            category_class = getattr(importlib.import_module(owner) if owner else builtins, name)
        else:
            category_class = Warning
        warnings.filterwarnings(action, message=message, category=category_class, module=module)


def _run_forked(entry: Callable[[], int | None], argv: list[str], cwd: str, timeout: float) -> dict:
    """Run ``entry`` with ``sys.argv = argv`` in a forked child; its exit status and output."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: behave like `python -m <console script>`
            status = 1
            try:
                os.chdir(cwd)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.argv = list(argv)
                try:
                    raise SystemExit(entry())
                except SystemExit as exit_request:
                    code = exit_request.code
                    if code is None or isinstance(code, int):
                        status = code or 0
                    else:
                        print(code, file=sys.stderr)
                except BaseException:  # noqa: BLE001 (an uncaught exception, as Python shows it)
                    sys.excepthook(*sys.exc_info())
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(status)
        deadline = time.monotonic() + timeout
        while True:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                returncode = os.waitstatus_to_exitcode(wait_status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                returncode = "timeout"
                break
            time.sleep(0.01)
        out.seek(0)
        err.seek(0)
        return {"returncode": returncode, "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}


def _console_script_entry(script: str) -> Callable[[], int | None]:
    """The function a console script (e.g. .venv/bin/ls-sweep) calls, imported here."""
    import importlib

    text = Path(script).read_text()
    match = re.search(r"^from (\S+) import (\w+)$", text, re.M)
    if not match:
        raise RuntimeError(f"{script} is not a console script")
    return getattr(importlib.import_module(match.group(1)), match.group(2))


def serve(request: dict) -> list[dict]:
    """Run every case of one command: ``request`` = {kind, target, prog, ini, cases: [{args, cwd}]}."""
    import runpy

    _apply_known_warning_filters(request["ini"])
    if request["kind"] == "console":
        entry = _console_script_entry(request["target"])
    else:  # a script run as `python scripts/x.py`
        for module in request.get("preload", []):
            __import__(module)

        def entry():
            runpy.run_path(request["target"], run_name="__main__")
    return [_run_forked(entry, [request["prog"], *case["args"]], case["cwd"], request["timeout"])
            for case in request["cases"]]


if __name__ == "__main__":  # python tests/test_bad_input.py REQUEST.json ANSWER.json
    sys.path.insert(0, os.getcwd())
    with open(sys.argv[1]) as request_file:
        answer = serve(json.load(request_file))
    with open(sys.argv[2], "w") as answer_file:  # not stdout: importing a command may print there
        json.dump(answer, answer_file)
    sys.exit(0)


# -- the cases -----------------------------------------------------------------------------------

class Command(NamedTuple):
    kind: str      # "console": a console script in the venv; "script": python scripts/<name>
    target: str    # console script name or script path (relative to the repository)
    preload: tuple = ()


COMMANDS = {
    "ls-sweep": Command("console", "ls-sweep"),
    "ls-cache-teacher": Command("console", "ls-cache-teacher"),
    "ls-vision": Command("console", "ls-vision"),
    "prepare_bible.py": Command("script", "scripts/prepare_bible.py", ("ls_plugins.cli",)),
    "compare_calibration.py": Command("script", "scripts/compare_calibration.py",
                                      ("ls_plugins.cli", "ls_plugins.plots")),
    "fairseq-train": Command("console", "fairseq-train"),
    "fairseq-generate": Command("console", "fairseq-generate"),
    "fairseq-hydra-train": Command("console", "fairseq-hydra-train"),
}


class Case(NamedTuple):
    id: str
    command: str
    args: Callable  # (ctx, out: Path) -> list of arguments
    option: str     # the stderr line must name this ("A|B": either; positionals in any case)
    third_party: str = ""  # a regex of whole stderr lines the command prints whatever we do


# fairseq-hydra-train: hydra logs its job name at DEBUG level before fairseq (or our plugin) runs,
# because importing fairseq 0.12 calls logging.basicConfig(level=DEBUG) (wav2vec2_classification)
HYDRA_JOB_LINES = r"DEBUG:hydra\.core\.utils:Setting JobRuntime:name=\w+"


def resolve(ctx, out, value) -> str:
    """``value`` with placeholders such as ``{ckpt}`` (a ``ctx`` attribute) and ``{out}`` filled in."""
    return str(value).format(out=out, **vars(ctx))


def with_args(*template):
    return lambda ctx, out: [resolve(ctx, out, a) for a in template]


def sweep(*extra, data="{data}", model="ls={ckpt}", temperatures=("--temperatures", "1"),
          output_dir="{out}/sweep"):
    return with_args(data, "--model", model, *temperatures, "--output-dir", output_dir,
                     "--gen-subset", "valid", "--cpu", *extra)


def cache_teacher(*extra, data="{data}", teacher="{ckpt}", out="{out}/cache"):
    return with_args(data, "--teacher-path", teacher, "--split", "valid", "--cpu", "--out", out, *extra)


def vision(*extra, dataset="digits", output_dir="{out}/run"):
    return with_args("--dataset", dataset, "--device", "cpu", "--epochs", "1", "--quiet",
                     "--output-dir", output_dir, *extra)


def train(criterion, *extra, data="{data}"):
    return with_args(data, "--user-dir", str(REPO / "ls_plugins"), *TINY_TRANSFORMER, "--max-update", "1",
                     "--save-dir", "{out}/save", "--criterion", criterion, *extra)


def generate(*extra, scoring=True):
    task = ["--task", "translation_calibration", "--scoring", "calibration"] if scoring else []
    return with_args("{data}", "--user-dir", str(REPO / "ls_plugins"), "--path", "{ckpt}", "--cpu",
                     "--gen-subset", "valid", *task, *extra)


def bible(*extra):
    return with_args("{out}/corpus", *extra)


def compare(*curves, out="{out}/fig.png"):
    return with_args(out, *curves)


CASES = [
    # ls-sweep
    Case("sweep-temperature-zero", "ls-sweep", sweep(temperatures=("--temperatures", "0")), "--temperatures"),
    Case("sweep-temperature-nan", "ls-sweep", sweep(temperatures=("--temperatures", "nan")), "--temperatures"),
    Case("sweep-temperature-inf", "ls-sweep", sweep(temperatures=("--temperatures", "1,inf")), "--temperatures"),
    Case("sweep-temperature-word", "ls-sweep", sweep(temperatures=("--temperatures", "hot")), "--temperatures"),
    Case("sweep-temperatures-empty", "ls-sweep", sweep(temperatures=("--temperatures", "")), "--temperatures"),
    Case("sweep-range-backwards", "ls-sweep", sweep(temperatures=("--temperature-range", "2:1:0.5")),
         "--temperature-range"),
    Case("sweep-range-zero-step", "ls-sweep", sweep(temperatures=("--temperature-range", "1:2:0")),
         "--temperature-range"),
    Case("sweep-range-garbage", "ls-sweep", sweep(temperatures=("--temperature-range", "a:b")),
         "--temperature-range"),
    Case("sweep-model-no-label", "ls-sweep", sweep(model="{ckpt}"), "--model"),
    Case("sweep-model-missing", "ls-sweep", sweep(model="x={out}/no.pt"), "--model"),
    Case("sweep-model-directory", "ls-sweep", sweep(model="x={a_dir}"), "--model"),
    Case("sweep-model-random-bytes", "ls-sweep", sweep(model="x={random_pt}"), "--model"),
    Case("sweep-model-label-twice", "ls-sweep", sweep("--model", "ls={ckpt}"), "--model"),
    Case("sweep-model-other-dictionary", "ls-sweep", sweep(data="{other_data}"), "--model"),
    Case("sweep-output-dir-is-file", "ls-sweep", sweep(output_dir="{garbage}"), "--output-dir"),
    Case("sweep-output-dir-unwritable", "ls-sweep", sweep(output_dir="/proc/ls-sweep"), "--output-dir"),
    Case("sweep-data-missing", "ls-sweep", sweep(data="{out}/nodata"), "data"),
    Case("sweep-model-data-missing", "ls-sweep", sweep("--model-data", "ls={out}/nodata"), "--model-data"),
    Case("sweep-model-data-unknown-label", "ls-sweep", sweep("--model-data", "other={data}"), "--model-data"),
    Case("sweep-gen-subset-unknown", "ls-sweep", sweep("--gen-subset", "nosuchsplit"), "--gen-subset"),
    Case("sweep-beam-zero", "ls-sweep", sweep("--beam", "0"), "--beam"),
    Case("sweep-beam-float", "ls-sweep", sweep("--beam", "1.5"), "--beam"),
    Case("sweep-lenpen-nan", "ls-sweep", sweep("--lenpen", "nan"), "--lenpen"),
    Case("sweep-max-len-a-inf", "ls-sweep", sweep("--max-len-a", "inf"), "--max-len-a"),
    Case("sweep-calibration-bins-zero", "ls-sweep", sweep("--calibration-bins", "0"), "--calibration-bins"),
    Case("sweep-max-tokens-negative", "ls-sweep", sweep("--max-tokens", "-1"), "--max-tokens"),
    Case("sweep-temperature-batch-zero", "ls-sweep", sweep("--temperature-batch", "0"), "--temperature-batch"),
    Case("sweep-sacrebleu-tokenizer-unknown", "ls-sweep", sweep("--sacrebleu-tokenizer", "nope"),
         "--sacrebleu-tokenizer"),
    # ls-cache-teacher
    Case("cache-topk-zero", "ls-cache-teacher", cache_teacher("--topk", "0"), "--topk"),
    Case("cache-topk-word", "ls-cache-teacher", cache_teacher("--topk", "many"), "--topk"),
    Case("cache-temperature-zero", "ls-cache-teacher", cache_teacher("--temperature", "0"), "--temperature"),
    Case("cache-temperature-nan", "ls-cache-teacher", cache_teacher("--temperature", "nan"), "--temperature"),
    Case("cache-temperature-minus-inf", "ls-cache-teacher", cache_teacher("--temperature=-inf"),
         "--temperature"),
    Case("cache-max-tokens-zero", "ls-cache-teacher", cache_teacher("--max-tokens", "0"), "--max-tokens"),
    Case("cache-batch-size-zero", "ls-cache-teacher", cache_teacher("--batch-size", "0"), "--batch-size"),
    Case("cache-split-empty", "ls-cache-teacher", cache_teacher("--split", ""), "--split"),
    Case("cache-split-unknown", "ls-cache-teacher", cache_teacher("--split", "nosuchsplit"), "--split"),
    Case("cache-teacher-missing", "ls-cache-teacher", cache_teacher(teacher="{out}/no.pt"), "--teacher-path"),
    Case("cache-teacher-directory", "ls-cache-teacher", cache_teacher(teacher="{a_dir}"), "--teacher-path"),
    Case("cache-teacher-random-bytes", "ls-cache-teacher", cache_teacher(teacher="{random_pt}"),
         "--teacher-path"),
    Case("cache-teacher-other-dictionary", "ls-cache-teacher", cache_teacher(data="{other_data}"),
         "--teacher-path"),
    Case("cache-teacher-data-garbage", "ls-cache-teacher", cache_teacher("--teacher-data", "{a_dir}"),
         "--teacher-data"),
    Case("cache-out-under-a-file", "ls-cache-teacher", cache_teacher(out="{garbage}/cache"), "--out"),
    Case("cache-data-missing", "ls-cache-teacher", cache_teacher(data="{out}/nodata"), "data"),
    # ls-vision
    Case("vision-epochs-zero", "ls-vision", vision("--epochs", "0"), "--epochs"),
    Case("vision-epochs-word", "ls-vision", vision("--epochs", "ten"), "--epochs"),
    Case("vision-lr-nan", "ls-vision", vision("--lr", "nan"), "--lr"),
    Case("vision-lr-negative", "ls-vision", vision("--lr", "-0.1"), "--lr"),
    Case("vision-label-smoothing-above-one", "ls-vision", vision("--label-smoothing", "1.5"), "--label-smoothing"),
    Case("vision-label-smoothing-nan", "ls-vision", vision("--label-smoothing", "nan"), "--label-smoothing"),
    Case("vision-momentum-one", "ls-vision", vision("--momentum", "1"), "--momentum"),
    Case("vision-weight-decay-negative", "ls-vision", vision("--wd", "-1"), "--wd"),
    Case("vision-dataset-unknown", "ls-vision", vision(dataset="imagenet"), "--dataset"),
    Case("vision-model-unknown", "ls-vision", vision("--model", "vgg"), "--model"),
    Case("vision-batch-size-zero", "ls-vision", vision("--batch-size", "0"), "--batch-size"),
    Case("vision-calibration-bins-zero", "ls-vision", vision("--calibration-bins", "0"), "--calibration-bins"),
    Case("vision-milestones-empty", "ls-vision", vision("--lr-scheduler", "step", "--lr-milestones"),
         "--lr-milestones"),
    Case("vision-device-cuda-absent", "ls-vision", vision("--device", "cuda"), "--device"),
    Case("vision-optimizer-unknown", "ls-vision", vision("--optimizer", "lion"), "--optimizer"),
    Case("vision-mlp-dropout-above-one", "ls-vision", vision("--model", "mlp", "--mlp-dropout", "1.5"),
         "--mlp-dropout"),
    Case("vision-match-gamma-one", "ls-vision", vision("--teacher", "{vision_ckpt}", "--match-gamma", "1"),
         "--match-gamma"),
    Case("vision-mi-classes-garbage", "ls-vision", vision("--mi-every", "1", "--mi-classes", "cat"),
         "--mi-classes"),
    Case("vision-lr-gamma-zero", "ls-vision", vision("--lr-gamma", "0"), "--lr-gamma"),
    Case("vision-distill-temperature-zero", "ls-vision",
         vision("--teacher", "{vision_ckpt}", "--distill-temperature", "0"), "--distill-temperature"),
    Case("vision-distill-weight-above-one", "ls-vision",
         vision("--teacher", "{vision_ckpt}", "--distill-weight", "2"), "--distill-weight"),
    Case("vision-teacher-missing", "ls-vision", vision("--teacher", "{out}/no.pt"), "--teacher"),
    Case("vision-teacher-random-bytes", "ls-vision", vision("--teacher", "{random_pt}"), "--teacher"),
    Case("vision-teacher-other-images", "ls-vision", vision("--teacher", "{vision_ckpt}", dataset="synthetic"),
         "--teacher"),
    Case("vision-resume-directory", "ls-vision", vision("--resume", "{a_dir}"), "--resume"),
    Case("vision-resume-other-model", "ls-vision", vision("--resume", "{vision_ckpt}", "--model", "resnet20"),
         "--resume|--model"),
    Case("vision-output-dir-under-a-file", "ls-vision", vision(output_dir="{garbage}/run"), "--output-dir"),
    Case("vision-plot-no-runs", "ls-vision", with_args("plot", "--out", "{out}/fig.png"), "RUN_DIR"),
    Case("vision-plot-run-missing", "ls-vision", with_args("plot", "{out}/norun", "--out", "{out}/fig.png"),
         "RUN_DIR"),
    Case("vision-plot-run-without-metrics", "ls-vision", with_args("plot", "{a_dir}", "--out", "{out}/fig.png"),
         "RUN_DIR"),
    Case("vision-plot-out-under-a-file", "ls-vision",
         with_args("plot", "{vision_run}", "--out", "{garbage}/fig.png"), "--out"),
    # scripts/prepare_bible.py
    Case("bible-vocab-size-one", "prepare_bible.py", bible("--vocab-size", "1"), "--vocab-size"),
    Case("bible-vocab-size-below-characters", "prepare_bible.py",
         bible("--vocab-size", "5", "--train-size", "200", "--valid-size", "10", "--test-size", "10"),
         "--vocab-size"),
    Case("bible-valid-size-zero", "prepare_bible.py", bible("--valid-size", "0"), "--valid-size"),
    Case("bible-train-size-negative", "prepare_bible.py", bible("--train-size", "-3"), "--train-size"),
    Case("bible-held-out-too-large", "prepare_bible.py", bible("--valid-size", "40000", "--test-size", "40000"),
         "--valid-size"),
    Case("bible-same-languages", "prepare_bible.py", bible("--src-lang", "en", "--tgt-lang", "en"), "--tgt-lang"),
    Case("bible-empty-language", "prepare_bible.py", bible("--src-lang", ""), "--src-lang"),
    Case("bible-unknown-module", "prepare_bible.py", bible("--src-module", "NoSuchBible"), "--src-module"),
    Case("bible-workers-word", "prepare_bible.py", bible("--workers", "two"), "--workers"),
    Case("bible-out-under-a-file", "prepare_bible.py", with_args("{garbage}/corpus"), "OUT"),
    Case("bible-out-unwritable", "prepare_bible.py", with_args("/proc/corpus"), "OUT"),
    # scripts/compare_calibration.py
    Case("compare-garbage-json", "compare_calibration.py", compare("a={garbage}"), "LABEL=PATH"),
    Case("compare-missing-json", "compare_calibration.py", compare("a={out}/no.json"), "LABEL=PATH"),
    Case("compare-directory-json", "compare_calibration.py", compare("a={a_dir}"), "LABEL=PATH"),
    Case("compare-unscored-json", "compare_calibration.py", compare("a={empty_json}"), "LABEL=PATH"),
    Case("compare-no-label", "compare_calibration.py", compare("{calibration_json}"), "LABEL=PATH"),
    Case("compare-label-twice", "compare_calibration.py",
         compare("a={calibration_json}", "a={calibration_json}"), "LABEL=PATH"),
    Case("compare-no-curves", "compare_calibration.py", compare(), "LABEL=PATH"),
    Case("compare-out-is-directory", "compare_calibration.py", compare("a={calibration_json}", out="{a_dir}"),
         "OUT"),
    Case("compare-out-under-a-file", "compare_calibration.py",
         compare("a={calibration_json}", out="{garbage}/fig.png"), "OUT"),
    # fairseq-train --criterion smoothed_ce
    Case("smoothed-alpha-one", "fairseq-train", train("smoothed_ce", "--label-smoothing", "1"), "--label-smoothing"),
    Case("smoothed-alpha-negative", "fairseq-train", train("smoothed_ce", "--label-smoothing", "-0.1"),
         "--label-smoothing"),
    Case("smoothed-alpha-nan", "fairseq-train", train("smoothed_ce", "--label-smoothing", "nan"),
         "--label-smoothing"),
    Case("smoothed-alpha-word", "fairseq-train", train("smoothed_ce", "--label-smoothing", "some"),
         "--label-smoothing"),
    Case("smoothed-prior-unknown", "fairseq-train", train("smoothed_ce", "--smoothing-prior", "zipf"),
         "--smoothing-prior"),
    Case("smoothed-calibration-bins-zero", "fairseq-train", train("smoothed_ce", "--calibration-bins", "0"),
         "--calibration-bins"),
    Case("smoothed-ignore-prefix-negative", "fairseq-train", train("smoothed_ce", "--ignore-prefix-size", "-1"),
         "--ignore-prefix-size"),
    # fairseq-train --criterion distillation_ce
    Case("distill-temperature-zero", "fairseq-train",
         train("distillation_ce", "--teacher-path", "{ckpt}", "--distill-temperature", "0"), "--distill-temperature"),
    Case("distill-temperature-inf", "fairseq-train",
         train("distillation_ce", "--teacher-path", "{ckpt}", "--distill-temperature", "inf"),
         "--distill-temperature"),
    Case("distill-weight-above-one", "fairseq-train",
         train("distillation_ce", "--teacher-path", "{ckpt}", "--distill-weight", "1.5"), "--distill-weight"),
    Case("distill-weight-nan", "fairseq-train",
         train("distillation_ce", "--teacher-path", "{ckpt}", "--distill-weight", "nan"), "--distill-weight"),
    Case("distill-topk-zero", "fairseq-train",
         train("distillation_ce", "--teacher-path", "{ckpt}", "--teacher-topk", "0"), "--teacher-topk"),
    Case("distill-tail-unknown", "fairseq-train",
         train("distillation_ce", "--teacher-path", "{ckpt}", "--teacher-tail", "fat"), "--teacher-tail"),
    Case("distill-no-teacher", "fairseq-train", train("distillation_ce"), "--teacher-path"),
    Case("distill-teacher-missing", "fairseq-train", train("distillation_ce", "--teacher-path", "{out}/no.pt"),
         "--teacher-path"),
    Case("distill-teacher-random-bytes", "fairseq-train",
         train("distillation_ce", "--teacher-path", "{random_pt}"), "--teacher-path"),
    Case("distill-teacher-other-dictionary", "fairseq-train",
         train("distillation_ce", "--teacher-path", "{ckpt}", data="{other_data}"), "--teacher-path"),
    Case("distill-cache-missing", "fairseq-train",
         train("distillation_ce", "--teacher-cache", "{out}/nocache"), "--teacher-cache"),
    Case("distill-cache-garbage", "fairseq-train", train("distillation_ce", "--teacher-cache", "{a_dir}"),
         "--teacher-cache"),
    # fairseq-generate --task translation_calibration --scoring calibration
    Case("generate-bins-zero", "fairseq-generate", generate("--calibration-bins", "0"), "--calibration-bins"),
    Case("generate-bins-word", "fairseq-generate", generate("--calibration-bins", "many"), "--calibration-bins"),
    Case("generate-temperature-zero", "fairseq-generate", generate("--temperature", "0"), "--temperature"),
    Case("generate-temperature-nan", "fairseq-generate", generate("--temperature", "nan"), "--temperature"),
    Case("generate-temperature-minus-inf", "fairseq-generate", generate("--temperature=-inf"), "--temperature"),
    Case("generate-json-unwritable", "fairseq-generate", generate("--calibration-json", "/proc/cal.json"),
         "--calibration-json"),
    Case("generate-json-directory", "fairseq-generate", generate("--calibration-json", "{a_dir}"),
         "--calibration-json"),
    Case("generate-plot-under-a-file", "fairseq-generate", generate("--calibration-plot", "{garbage}/cal.png"),
         "--calibration-plot"),
    Case("generate-scorer-without-task", "fairseq-generate", generate("--scoring", "calibration", scoring=False),
         "--scoring"),
    # fairseq-hydra-train with a YAML config
    Case("hydra-yaml-alpha-out-of-range", "fairseq-hydra-train",
         # hydra writes its own run directory (logs) whatever the config holds: kept out of the way
         with_args("--config-dir", "{hydra_dir}", "--config-name", "bad_alpha",
                   "hydra.run.dir={hydra_dir}/runs", "checkpoint.save_dir={out}/save"),
         "--label-smoothing|label_smoothing", HYDRA_JOB_LINES),
]


# -- fixtures ------------------------------------------------------------------------------------

class Context:
    """Paths the cases refer to as ``{name}``."""


@pytest.fixture(scope="module")
def ctx(request, tmp_path_factory):
    """Inputs shared by the cases: only those a command's cases need are built (lazily)."""
    base = tmp_path_factory.mktemp("bad_input")
    context = Context()
    context.a_dir = base / "a_directory"
    context.a_dir.mkdir()
    context.garbage = base / "garbage.txt"
    context.garbage.write_text("this is not a checkpoint, a JSON file or a directory\n")
    context.random_pt = base / "random.pt"
    context.random_pt.write_bytes(bytes((i * 97 + 13) % 256 for i in range(4096)))
    context.calibration_json = base / "calibration.json"
    context.calibration_json.write_text(json.dumps({
        "ece": 0.1, "nll": 1.0, "accuracy": 0.5, "confidence": 0.6,
        "bins": [{"lower": 0.0, "upper": 1.0, "count": 4, "confidence": 0.6, "accuracy": 0.5}]}))
    context.empty_json = base / "unscored.json"
    context.empty_json.write_text(json.dumps({"ece": None, "nll": None, "accuracy": None,
                                              "confidence": None, "bins": []}))
    context.base = base
    context.request = request
    return context


def _fairseq_inputs(ctx) -> None:
    """The Bible data, a tiny trained model, and data with another dictionary."""
    if hasattr(ctx, "data"):
        return
    corpus = ctx.request.getfixturevalue("bible")
    ctx.data = corpus / "bin"
    ctx.ckpt = ctx.request.getfixturevalue("ls_checkpoint")
    other = ctx.base / "other"
    other.mkdir()
    words = [f"w{i}" for i in range(12)]
    for split in ("train", "valid", "test"):
        for lang in ("es", "en"):
            (other / f"{split}.{lang}").write_text(
                "\n".join(" ".join(words[j:j + 4]) for j in range(8)) + "\n")
    run([command("fairseq-preprocess"), "--source-lang", "es", "--target-lang", "en",
         "--trainpref", other / "train", "--validpref", other / "valid", "--testpref", other / "test",
         "--destdir", other / "bin", "--joined-dictionary", "--workers", "1"])
    ctx.other_data = other / "bin"
    hydra_dir = ctx.base / "hydra"
    hydra_dir.mkdir()
    (hydra_dir / "bad_alpha.yaml").write_text(
        f"common:\n  user_dir: {REPO / 'ls_plugins'}\n  cpu: true\n  no_progress_bar: true\n"
        f"task:\n  _name: translation\n  data: {ctx.data}\n"
        f"criterion:\n  _name: smoothed_ce\n  label_smoothing: 2.0\n"
        f"model:\n  _name: transformer\noptimizer:\n  _name: adam\nlr_scheduler:\n  _name: fixed\n"
        f"optimization:\n  max_update: 1\n  lr: [0.001]\ndataset:\n  max_tokens: 2000\n")
    ctx.hydra_dir = hydra_dir


def _vision_inputs(ctx) -> None:
    """A finished one-epoch ls-vision run on digits (its directory and checkpoint)."""
    if hasattr(ctx, "vision_ckpt"):
        return
    ctx.vision_run = ctx.base / "vision_run"
    run([command("ls-vision"), "--dataset", "digits", "--device", "cpu", "--epochs", "1", "--quiet",
         "--output-dir", ctx.vision_run])
    ctx.vision_ckpt = ctx.vision_run / "checkpoint.pt"


NEEDS = {"ls-sweep": _fairseq_inputs, "ls-cache-teacher": _fairseq_inputs, "fairseq-train": _fairseq_inputs,
         "fairseq-generate": _fairseq_inputs, "fairseq-hydra-train": _fairseq_inputs,
         "ls-vision": _vision_inputs}


@pytest.fixture(scope="module")
def results(ctx):
    """Case id -> outcome; each command's cases run together, the first time one is asked for."""
    done: dict = {}

    def outcome(case: Case) -> dict:
        if case.id not in done:
            done.update(_run_command(ctx, case.command))
        return done[case.id]
    return outcome


def _run_command(ctx, name: str) -> dict:
    if name in NEEDS:
        NEEDS[name](ctx)
    spec = COMMANDS[name]
    cases = [case for case in CASES if case.command == name]
    dirs = {}
    for case in cases:
        out, cwd = ctx.base / "cases" / case.id / "out", ctx.base / "cases" / case.id / "cwd"
        out.mkdir(parents=True)
        cwd.mkdir()
        dirs[case.id] = (out, cwd)
    request = {
        "kind": spec.kind, "prog": name if spec.kind == "console" else str(REPO / spec.target),
        "target": str(BIN / spec.target) if spec.kind == "console" else str(REPO / spec.target),
        "preload": list(spec.preload), "ini": str(REPO / "pytest.ini"), "timeout": 120,
        "cases": [{"args": case.args(ctx, dirs[case.id][0]), "cwd": str(dirs[case.id][1])}
                  for case in cases]}
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONWARNINGS", None)
    request_file, answer_file = ctx.base / f"{name}.request.json", ctx.base / f"{name}.answer.json"
    request_file.write_text(json.dumps(request))
    server = subprocess.run([sys.executable, __file__, request_file, answer_file], capture_output=True,
                            text=True, cwd=REPO, env=env)
    if server.returncode != 0 or not answer_file.exists():
        failure = f"the case server for {name} failed:\n{server.stderr[-4000:]}"
        return {case.id: {"server_failure": failure} for case in cases}
    outcomes = json.loads(answer_file.read_text())
    for case, outcome in zip(cases, outcomes):
        out, cwd = dirs[case.id]
        outcome["left_behind"] = sorted(str(p.relative_to(out.parent)) for d in (out, cwd)
                                        for p in d.rglob("*"))
        outcome["argv"] = request["cases"][cases.index(case)]["args"]
    return {case.id: outcome for case, outcome in zip(cases, outcomes)}


# -- the test ------------------------------------------------------------------------------------

def test_matrix_is_large_and_covers_every_command():
    assert len(CASES) >= 60 and len({case.id for case in CASES}) == len(CASES)
    assert {case.command for case in CASES} == set(COMMANDS)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_in_one_line(case, results):
    outcome = results(case)
    assert "server_failure" not in outcome, outcome.get("server_failure")
    stderr = outcome["stderr"]
    lines = [line for line in stderr.splitlines()
             if not (case.third_party and re.fullmatch(case.third_party, line))]
    context = f"argv: {outcome['argv']}\n--- stderr\n{stderr[-3000:]}\n--- stdout\n{outcome['stdout'][-1500:]}"
    assert "Traceback" not in stderr, context
    assert outcome["returncode"] == 2, context
    assert len(lines) == 1, context
    prog = case.command if COMMANDS[case.command].kind == "console" else Path(COMMANDS[case.command].target).name
    assert re.match(rf"{re.escape(prog)}( [a-z]+)?: error: ", lines[0]), context  # "ls-vision plot: ..."
    assert any(option.lower() in lines[0].lower() if option.isupper() or option == "data"
               else option in lines[0] for option in case.option.split("|")), \
        f"the error does not name {case.option}\n{context}"
    assert outcome["left_behind"] == [], f"files written: {outcome['left_behind']}\n{context}"
