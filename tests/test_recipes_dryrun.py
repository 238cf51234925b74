"""The GPU recipes for the standard corpora, checked without a GPU or the internet.

``examples/translation/{iwslt14_de_en,wmt16_en_de}/run.sh`` download IWSLT'14 / WMT'16 and train
for hours, so they never run here.  Under ``DRY_RUN=1`` they print every command instead
(``+ prog arg ...``); each printed command is parsed by the parser of the program that would run
it, without running it: fairseq's own parsers for ``fairseq-*`` (``parse_args_and_arch``, so the
architecture, ``--user-dir`` and our criterion/task/scorer options are all checked), the
``build_parser()`` of our console scripts (found through their installed entry points) and of the
Python scripts.  The commands are replayed in order in a scratch directory: every input a
command names must be the output of an earlier command (the pipeline is wired together), and the
outputs are then created, empty, so that the parsers' own checks (existing teacher checkpoints
and caches, writable calibration outputs) pass exactly when the wiring is right.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import REPO, run

IWSLT = "examples/translation/iwslt14_de_en/run.sh"
WMT = "examples/translation/wmt16_en_de/run.sh"
STEPS = ("preprocess", "train hard", "train ls", "generate with calibration", "sweep",
         "cache teacher", "distil")


def dry_run(recipe: str, work: Path, *steps: str, env: dict | None = None) -> list[list[str]]:
    """The commands the recipe prints under DRY_RUN=1, as argv lists."""
    assignments = [f"{key}={value}" for key, value in {"DRY_RUN": 1, **(env or {})}.items()]
    result = run(["env", *assignments, shutil.which("bash"), REPO / recipe, work, *steps])
    assert not work.exists(), "a dry run must not write anything"
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def console_script_module(name: str):
    """The module behind an installed console script (``ls-sweep`` -> ``ls_plugins.sweep_cli``)."""
    (entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == name]
    return importlib.import_module(entry.module)


def script_module(path: str):
    spec = importlib.util.spec_from_file_location(f"recipe_script_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(program: str, parser, argv: list[str], *, fairseq: bool = False):
    """Parse ``argv`` as the program would, failing the test (not exiting) on a rejected option."""
    from fairseq import options
    try:
        return options.parse_args_and_arch(parser, argv) if fairseq else parser.parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"{program} rejected its command line (exit {err.code}): {shlex.join(argv)}")


@dataclass
class Parsed:
    program: str
    args: object


@dataclass
class Replay:
    """Replays printed commands in ``work``: checks inputs, parses, creates the outputs."""
    work: Path
    files: set = field(default_factory=set)  # produced files (created empty)
    trees: set = field(default_factory=set)  # directories filled by tar: anything below exists
    data_dirs: set = field(default_factory=set)  # fairseq-preprocess --destdir
    checkpoints: set = field(default_factory=set)  # SAVE_DIR/checkpoint_best.pt of fairseq-train
    caches: dict = field(default_factory=dict)  # ls-cache-teacher --out -> its --teacher-path
    parsed: list = field(default_factory=list)

    def inside(self, path) -> Path:
        path = Path(path)
        assert self.work in path.parents, f"{path} lies outside the recipe's directory {self.work}"
        return path

    def produce(self, path, *, directory: bool = False) -> None:
        path = self.inside(path)
        if directory:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            self.files.add(path)

    def require(self, path) -> None:
        path = Path(path)
        assert path in self.files or any(t in path.parents for t in self.trees), \
            f"{path} is read before any earlier command produced it"

    def replay(self, commands: list[list[str]]) -> list[Parsed]:
        for argv in commands:
            program, args = argv[0], argv[1:]
            handler = getattr(self, "do_" + program.replace("-", "_"), None)
            assert handler is not None, f"no parser known for {program}: {shlex.join(argv)}"
            handler(args)
        return self.parsed

    # -- shell utilities (nothing to parse beyond their files) --------------------------------

    def do_mkdir(self, args):
        assert args[0] == "-p", args
        for path in args[1:]:
            self.produce(path, directory=True)

    def do_curl(self, args):
        output, url = Path(args[args.index("-o") + 1]), args[-1]
        assert url.startswith("https://"), url
        self.produce(output)

    def do_mv(self, args):
        source, target = map(Path, args)
        self.require(source)
        self.files.discard(source)
        self.produce(target)

    def do_tar(self, args):
        assert args[0] == "-xzf" and args[2] == "-C", args
        self.require(args[1])
        target = self.inside(args[3])
        assert target.is_dir(), f"tar -C {target}: not created by an earlier mkdir"
        self.trees.add(target)

    # -- our Python scripts and console scripts ------------------------------------------------

    def do_python(self, args):
        script, argv = args[0], args[1:]
        parsed = parse(Path(script).name, script_module(script).build_parser(), argv)
        if script.endswith("prepare_iwslt14.py"):
            self.require(parsed.orig)
            for split in ("train", "valid", "test"):
                for lang in ("de", "en"):
                    self.produce(Path(parsed.out) / "spm" / f"{split}.{lang}")
        elif script.endswith("compare_calibration.py"):  # its parser checks the JSONs exist
            self.produce(parsed.out)
        else:
            pytest.fail(f"unexpected script {script}")
        self.parsed.append(Parsed(Path(script).name, parsed))

    def do_ls_sweep(self, args):
        parsed = parse("ls-sweep", console_script_module("ls-sweep").build_parser(), args)
        assert parsed.data in self.data_dirs
        for model in parsed.model:
            self.require(model.partition("=")[2])
        self.produce(parsed.output_dir, directory=True)
        self.parsed.append(Parsed("ls-sweep", parsed))

    def do_ls_cache_teacher(self, args):
        parsed = parse("ls-cache-teacher", console_script_module("ls-cache-teacher").build_parser(), args)
        assert parsed.data in self.data_dirs
        self.require(parsed.teacher_path)
        for split in parsed.split.split(","):
            self.produce(Path(parsed.out) / split, directory=True)
        self.caches[parsed.out] = parsed.teacher_path
        self.parsed.append(Parsed("ls-cache-teacher", parsed))

    # -- fairseq ------------------------------------------------------------------------------

    def do_fairseq_preprocess(self, args):
        from fairseq import options
        console_script_module("fairseq-preprocess")  # installed
        parsed = parse("fairseq-preprocess", options.get_preprocessing_parser(), args)
        for prefix in (parsed.trainpref, parsed.validpref, parsed.testpref):
            for lang in (parsed.source_lang, parsed.target_lang):
                self.require(f"{prefix}.{lang}")
        self.produce(parsed.destdir, directory=True)
        self.data_dirs.add(parsed.destdir)
        self.parsed.append(Parsed("fairseq-preprocess", parsed))

    def do_fairseq_train(self, args):
        from fairseq import options
        console_script_module("fairseq-train")
        parsed = parse("fairseq-train", options.get_training_parser(), args, fairseq=True)
        assert parsed.data in self.data_dirs
        if parsed.criterion == "distillation_ce":
            assert parsed.teacher_cache in self.caches or parsed.teacher_path, args
            if parsed.teacher_path:
                self.require(parsed.teacher_path)
        checkpoint = Path(parsed.save_dir) / "checkpoint_best.pt"
        self.produce(checkpoint)
        self.checkpoints.add(str(checkpoint))
        self.parsed.append(Parsed("fairseq-train", parsed))

    def do_fairseq_generate(self, args):
        from fairseq import options
        console_script_module("fairseq-generate")
        parsed = parse("fairseq-generate", options.get_generation_parser(), args, fairseq=True)
        assert parsed.data in self.data_dirs
        for checkpoint in parsed.path.split(":"):
            assert checkpoint in self.checkpoints, f"--path {checkpoint}: no training wrote it"
        for output in (parsed.calibration_json, parsed.calibration_plot):
            if output:
                self.produce(output)
        self.parsed.append(Parsed("fairseq-generate", parsed))


@pytest.fixture(scope="module")
def fairseq_with_plugins():
    import ls_plugins
    ls_plugins.register_fairseq()


def replayed(recipe: str, work: Path, *steps: str, env: dict | None = None) -> list[Parsed]:
    commands = dry_run(recipe, work, *steps, env=env)
    work.mkdir()
    return Replay(work).replay(commands)


def runs(parsed: list[Parsed], program: str, **expected) -> list:
    return [p.args for p in parsed if p.program == program
            and all(getattr(p.args, key, None) == value for key, value in expected.items())]


def steps_present(parsed: list[Parsed], work: Path) -> dict[str, list]:
    """The paper's steps, each with the parsed commands that perform it (the two teachers train
    into WORK/hard and WORK/ls, as the recipes document)."""
    teacher = {name: runs(parsed, "fairseq-train", criterion="smoothed_ce", label_smoothing=alpha,
                          save_dir=str(work / name))
               for name, alpha in (("hard", 0.0), ("ls", 0.1))}
    return {
        "preprocess": runs(parsed, "fairseq-preprocess", joined_dictionary=True),
        "train hard": teacher["hard"],
        "train ls": teacher["ls"],
        "generate with calibration": runs(parsed, "fairseq-generate", task="translation_calibration",
                                          scoring="calibration"),
        "sweep": runs(parsed, "ls-sweep"),
        "cache teacher": runs(parsed, "ls-cache-teacher"),
        "distil": runs(parsed, "fairseq-train", criterion="distillation_ce"),
    }


def check_paper_pipeline(parsed: list[Parsed], work: Path, source: str, target: str) -> dict[str, list]:
    """What both recipes must do, whatever the corpus; returns the steps for corpus checks."""
    steps = steps_present(parsed, work)
    assert [name for name in STEPS if not steps[name]] == []
    (preprocess,) = steps["preprocess"]
    assert (preprocess.source_lang, preprocess.target_lang) == (source, target)
    teachers = {}
    for name in ("hard", "ls"):
        (teacher,) = steps[f"train {name}"]
        teachers[name] = str(Path(teacher.save_dir) / "checkpoint_best.pt")
    generated = steps["generate with calibration"]
    assert all(g.beam == 4 and g.calibration_json and g.calibration_plot for g in generated)
    fitted = [g for g in generated if g.calibration_fit_temperature]
    assert {(g.path, g.gen_subset) for g in fitted} == {(teachers["hard"], "valid"),
                                                         (teachers["ls"], "valid")}
    for name in ("hard", "ls"):
        assert any(g.path == teachers[name] and g.gen_subset == "test" and g.temperature == 1.0
                   for g in generated)
    (sweep,) = steps["sweep"]
    assert sweep.model == [f"hard={teachers['hard']}", f"ls={teachers['ls']}"]
    assert sweep.temperature_range
    caches = {c.teacher_path: c for c in steps["cache teacher"]}
    assert set(caches) == {teachers["hard"], teachers["ls"]}
    assert all(c.topk == 8 and c.split == "train,valid" for c in caches.values())
    cache_of = {name: caches[teachers[name]].out for name in teachers}
    students = steps["distil"]
    assert all(s.distill_weight == 1.0 and s.teacher_path is None for s in students)  # paper: beta 1
    from_hard = sorted(s.distill_temperature for s in students if s.teacher_cache == cache_of["hard"])
    from_ls = [s.distill_temperature for s in students if s.teacher_cache == cache_of["ls"]]
    assert from_hard == [1.0, 2.0, 4.0] and from_ls == [1.0]
    alone = runs(parsed, "fairseq-train", criterion="smoothed_ce", encoder_layers=3)
    assert sorted(s.label_smoothing for s in alone) == [0.0, 0.1]  # students without a teacher
    assert all(s.encoder_layers == 3 and s.decoder_layers == 3 for s in students)
    # every student is decoded with calibration on test
    assert {str(Path(s.save_dir) / "checkpoint_best.pt") for s in students + alone} <= \
        {g.path for g in generated if g.gen_subset == "test"}
    (compare,) = runs(parsed, "compare_calibration.py")
    assert [label for label, _ in compare.curves][0] == "hard targets"
    return steps


def test_iwslt14_recipe_parses_and_is_wired(tmp_path, fairseq_with_plugins):
    parsed = replayed(IWSLT, tmp_path / "work")
    steps = check_paper_pipeline(parsed, tmp_path / "work", "de", "en")
    (prepare,) = runs(parsed, "prepare_iwslt14.py")
    assert prepare.vocab_size == 10000 and prepare.lowercase
    for teacher in steps["train hard"] + steps["train ls"]:
        # fairseq's recommended IWSLT'14 settings, as fairseq itself reads them
        assert teacher.arch == "transformer_iwslt_de_en"
        assert (teacher.encoder_layers, teacher.encoder_embed_dim, teacher.encoder_ffn_embed_dim,
                teacher.encoder_attention_heads) == (6, 512, 1024, 4)
        assert teacher.share_decoder_input_output_embed and not teacher.share_all_embeddings
        assert teacher.optimizer == "adam" and eval(teacher.adam_betas) == (0.9, 0.98)
        assert teacher.lr == [5e-4] and teacher.lr_scheduler == "inverse_sqrt"
        assert teacher.warmup_updates == 4000 and teacher.dropout == 0.3
        assert teacher.weight_decay == 0.0001 and teacher.max_tokens == 4096
    for generated in steps["generate with calibration"]:
        assert generated.post_process == "sentencepiece"


def test_wmt16_recipe_parses_and_is_wired(tmp_path, fairseq_with_plugins):
    parsed = replayed(WMT, tmp_path / "work")
    steps = check_paper_pipeline(parsed, tmp_path / "work", "en", "de")
    (preprocess,) = steps["preprocess"]
    assert preprocess.nwordssrc == preprocess.nwordstgt == 32768
    assert Path(preprocess.trainpref).name == "train.tok.clean.bpe.32000"  # Google's archive
    assert Path(preprocess.validpref).name == "newstest2013.tok.bpe.32000"
    assert Path(preprocess.testpref).name == "newstest2014.tok.bpe.32000"
    for teacher in steps["train hard"] + steps["train ls"]:
        assert teacher.arch == "transformer_wmt_en_de"  # the paper's Transformer base
        assert (teacher.encoder_layers, teacher.encoder_embed_dim, teacher.encoder_ffn_embed_dim,
                teacher.encoder_attention_heads) == (6, 512, 2048, 8)
        assert teacher.share_all_embeddings and teacher.fp16
        assert teacher.lr == [5e-4] and teacher.warmup_init_lr == 1e-07
        assert teacher.max_tokens == 3584 and teacher.update_freq == [8]
    for generated in steps["generate with calibration"]:
        assert generated.lenpen == 0.6 and generated.post_process == "subword_nmt"
        assert generated.sacrebleu_tokenizer == "none"


def test_wmt16_recipe_big_model_and_prepared_text(tmp_path, fairseq_with_plugins):
    """ARCH picks fairseq's big model; WMT_TEXT binarises prepare-wmt14en2de.sh's output."""
    text = tmp_path / "text"
    text.mkdir()
    commands = dry_run(WMT, tmp_path / "work", "prepare", "train",
                       env={"ARCH": "transformer_vaswani_wmt_en_de_big", "DROPOUT": 0.3,
                            "WMT_TEXT": text})
    assert [argv[0] for argv in commands] == ["fairseq-preprocess", "mkdir", "fairseq-train",
                                              "mkdir", "fairseq-train"]
    replay = Replay(tmp_path / "work")
    replay.work.mkdir()
    replay.files |= {text / f"{split}.{lang}" for split in ("train", "valid", "test")
                     for lang in ("en", "de")}
    parsed = replay.replay(commands)
    (preprocess,) = runs(parsed, "fairseq-preprocess")
    assert preprocess.trainpref == str(text / "train") and preprocess.nwordssrc == -1
    teachers = runs(parsed, "fairseq-train")
    assert [(t.encoder_embed_dim, t.encoder_attention_heads, t.dropout) for t in teachers] == \
        [(1024, 16, 0.3)] * 2


def test_recipe_runs_only_the_named_steps_and_refuses_unknown_ones(tmp_path):
    commands = dry_run(IWSLT, tmp_path / "work", "sweep")
    assert [argv[0] for argv in commands] == ["ls-sweep"]
    result = run(["env", "DRY_RUN=1", shutil.which("bash"), REPO / IWSLT, tmp_path / "work", "trian"],
                 check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["run.sh: error: STEP: must be one of prepare, train, "
                                          "evaluate, sweep, distill, got trian"]
    assert result.stdout == "" and not (tmp_path / "work").exists()


def test_replay_catches_a_miswired_command(tmp_path, fairseq_with_plugins):
    """The replay is not a rubber stamp: a generate step that reads a checkpoint nobody trained,
    and an option fairseq does not know, both fail."""
    work = tmp_path / "work"
    commands = dry_run(IWSLT, work, "train", "evaluate")
    work.mkdir()
    data = {str(work / "data-bin")}  # the prepare step's output
    Replay(work, data_dirs=set(data)).replay(commands)  # as printed: fine
    generate = next(i for i, argv in enumerate(commands) if argv[0] == "fairseq-generate")
    wrong = [a.replace("/hard/checkpoint_best.pt", "/hrad/checkpoint_best.pt") for a in commands[generate]]
    with pytest.raises(AssertionError, match="no training wrote it"):
        Replay(work, data_dirs=set(data)).replay(commands[:generate] + [wrong])
    train = next(argv for argv in commands if argv[0] == "fairseq-train")
    with pytest.raises(pytest.fail.Exception, match="fairseq-train rejected its command line"):
        Replay(work, data_dirs=set(data)).replay([train + ["--label-smothing", "0.1"]])


# -- the one step that runs here for real: IWSLT'14 preparation on a toy archive -------------------

TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
             "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")


def toy_iwslt_archive(root: Path) -> tuple[Path, dict]:
    """A de-en.tgz laid out as IWSLT'14's, and the corpus fairseq's prepare-iwslt14.sh makes of it."""
    pairs = [(f"Das ist Satz Nummer {i}, sagt Anna.", f"This is sentence number {i}, says Anna.")
             for i in range(48)]
    # kept at the limits of clean-corpus-n's rule: a length ratio of exactly 1.5 (4 and 6
    # tokens), 175 tokens a side
    pairs += [("Ein kurzer Satz.", "This is a short one."), (" ".join(["wort"] * 175),) * 2]
    long = " ".join(["wort"] * 176)
    lines = {"de": ["<url>http://www.ted.com/talks/x.html</url>", "<keywords>talks, science</keywords>",
                    "<talkid>7</talkid>", "<title>Ein Titel</title>",
                    "<description>Eine Beschreibung hier</description>"],
             "en": ["<url>http://www.ted.com/talks/x.html</url>", "<keywords>talks, science</keywords>",
                    "<talkid>7</talkid>", "<title>A Title</title>",
                    "<description>A description here</description>"]}
    dropped = [("Ein kurzer Satz.", "This is a rather longer sentence."),  # ratio 7/4 > 1.5
               ("", "Nothing on the German side."), (long, long)]  # empty side; > 175 tokens
    for i, (de, en) in enumerate(pairs):
        lines["de"].append(de)
        lines["en"].append(en)
        if i in (3, 30, 31):
            bad_de, bad_en = dropped[(3, 30, 31).index(i)]
            lines["de"].append(bad_de)
            lines["en"].append(bad_en)
    orig = root / "de-en"
    orig.mkdir(parents=True)
    for lang in ("de", "en"):
        (orig / f"train.tags.de-en.{lang}").write_text("\n".join(lines[lang]) + "\n", encoding="utf-8")
    test = []
    for k, name in enumerate(TEST_SETS):
        segs = [(f"Prüfung {k} Zeile {j}, Max\u2019 Hund.", f"Test {k} line {j}, Max\u2019 dog.")
                for j in range(2)]
        for side, lang in enumerate(("de", "en")):
            body = "\n".join(f'<seg id="{j + 1}"> {seg[side]} </seg>' for j, seg in enumerate(segs))
            (orig / f"{name}.de-en.{lang}.xml").write_text(
                f'<mteval>\n<refset setid="{name}">\n<doc docid="1">\n{body}\n</doc>\n</refset>\n</mteval>\n',
                encoding="utf-8")
        test += [(de.replace("\u2019", "'"), en.replace("\u2019", "'")) for de, en in segs]
    kept = [("Ein Titel", "A Title"), ("Eine Beschreibung hier", "A description here"), *pairs]
    expected = {"valid": kept[22::23], "train": [p for i, p in enumerate(kept) if i % 23 != 22],
                "test": test}
    expected = {split: [(de.lower(), en.lower()) for de, en in rows] for split, rows in expected.items()}
    archive = root / "de-en.tgz"
    run(["tar", "-czf", archive, "-C", root, "de-en"])
    return archive, expected


def test_iwslt14_prepare_step_runs_on_a_toy_archive(tmp_path):
    """prepare for real (curl from a file:// URL, tar, prepare_iwslt14.py, fairseq-preprocess):
    fairseq's cleaning and split, lowercased; sentencepiece pieces that decode to the text; one
    joined dictionary; and a second run skips the finished step."""
    import sentencepiece as spm

    archive, expected = toy_iwslt_archive(tmp_path / "toy")
    work = tmp_path / "work"
    env = ["DRY_RUN=0", f"IWSLT_URL=file://{archive}", "VOCAB_SIZE=90", "WORKERS=1"]
    run(["env", *env, shutil.which("bash"), REPO / IWSLT, work, "prepare"])
    text = work / "text"
    pieces = spm.SentencePieceProcessor(model_file=str(text / "spm.model"))
    for split, rows in expected.items():
        for side, lang in enumerate(("de", "en")):
            raw = (text / "raw" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            assert raw == [row[side] for row in rows], (split, lang)
            encoded = (text / "spm" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()
            assert [pieces.decode(line.split()) for line in encoded] == raw
    data = work / "data-bin"
    assert (data / "dict.de.txt").read_text() == (data / "dict.en.txt").read_text()
    log = (data / "preprocess.log").read_text()
    for split, rows in expected.items():
        assert f"{split}.de: {len(rows)} sents" in log
    again = run(["env", *env, shutil.which("bash"), REPO / IWSLT, work, "prepare"])
    assert again.stdout == f"finished already: {data}/dict.en.txt\n"
