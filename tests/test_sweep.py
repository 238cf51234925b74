"""ls-sweep: BLEU/NLL/ECE over beam-search temperatures (paper Fig. 4), end to end.

The sweep is compared with the tools it must agree with, on the same data and options:
``fairseq-generate --temperature T`` (BLEU line) with the calibration hook (NLL/ECE JSON), and
``fairseq-validate`` (NLL at T = 1).
"""
import json
import math
import re

import pytest

from conftest import command, fairseq_train, run

TEMPERATURES = (0.8, 1.0, 1.6)
# fairseq's default --required-batch-size-multiple (8): stock fairseq drops 4 of the 100 valid
# sentences, ls-sweep and our generation hook score all 100 (fairseq's batches plus the last one)
GEN = ["--beam", "2", "--batch-size", "32", "--cpu", "--gen-subset", "valid",
       "--remove-bpe", "sentencepiece", "--max-len-b", "25", "--seed", "3"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One OpenMP thread per subprocess: on 2 shared, busy cores two threads per process are
    many times slower.  Both sides of every comparison run with the same setting."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def hard_checkpoint(bible, tmp_path_factory):
    """A tiny model trained with hard targets.  150 updates (~25 s): after 60-80 updates the tiny
    model still emits one token repeatedly, whatever the temperature."""
    save_dir = tmp_path_factory.mktemp("hard_model")
    fairseq_train(bible / "bin", save_dir, "--criterion", "smoothed_ce", "--label-smoothing", "0",
                  max_update=150)
    return save_dir / "checkpoint_last.pt"


def sweep(bible, out, *models, temperatures=TEMPERATURES, extra=(), check=True):
    args = [command("ls-sweep"), bible / "bin", "--output-dir", out, *GEN, "--no-progress-bar",
            "--temperatures", ",".join(map(str, temperatures)), *extra]
    for label, path in models:
        args += ["--model", f"{label}={path}"]
    return run(args, check=check)


@pytest.fixture(scope="module")
def swept(bible, hard_checkpoint, ls_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    result = sweep(bible, out, ("hard", hard_checkpoint), ("ls", ls_checkpoint))
    return result, out, json.loads((out / "sweep.json").read_text())


def point(summary, model, temperature):
    return next(p for p in summary["points"]
                if p["model"] == model and p["temperature"] == temperature)


CALIBRATION_KEYS = ("nll", "ece", "mce", "brier", "confidence", "accuracy")


def assert_same_calibration(ours, expected):
    """Equal up to float32 rounding (separate processes may round matrix products differently)."""
    assert ours["count"] == expected["count"]
    for key in CALIBRATION_KEYS:
        assert ours[key] == pytest.approx(expected[key], abs=1e-6), key


def test_outputs_table_json_csv_png(swept):
    result, out, summary = swept
    assert [(p["model"], p["temperature"]) for p in summary["points"]] == \
        [(m, t) for m in ("hard", "ls") for t in TEMPERATURES]
    assert summary["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|")
    for p in summary["points"]:
        assert p["tokens"] == p["calibration"]["count"] > 0
        assert p["sentences"] == p["subset_sentences"] == 100  # every sentence, multiple 8
        assert p["hypothesis_tokens"] == p["hypothesis_calibration"]["count"] > 0
        assert [p["ece_low"], p["ece_high"]] == p["calibration"]["intervals"]["ece"]
        assert p["ece_low"] < p["ece"] < p["ece_high"]
        assert [p["hypothesis_ece_low"], p["hypothesis_ece_high"]] == \
            p["hypothesis_calibration"]["intervals"]["ece"]
        assert p["calibration"]["bootstrap"] == p["hypothesis_calibration"]["bootstrap"] == 200
        assert p["bleu_string"].startswith(f"BLEU = {p['bleu']:.2f} ")
        assert math.isclose(p["nll_base2"], p["nll"] / math.log(2))
    hard = [p for p in summary["points"] if p["model"] == "hard"]
    assert len({p["bleu_string"] for p in hard}) > 1  # the temperature changes the beam search
    assert summary["best"]["hard"]["nll"] == min(hard, key=lambda p: p["nll"])["temperature"]
    assert summary["best"]["hard"]["ece"] == min(hard, key=lambda p: p["ece"])["temperature"]
    assert summary["best"]["hard"]["hypothesis_ece"] == \
        min(hard, key=lambda p: p["hypothesis_ece"])["temperature"]
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["model", "T", "BLEU", "NLL", "ECE", "ECE_95%", "hypECE",
                                "hypECE_95%", "conf", "acc"]
    row = lines[1].split()
    first = summary["points"][0]
    assert row[:3] == ["hard", "0.8", f"{first['bleu']:.2f}"] and row[4] == f"{first['ece']:.4f}"
    assert row[5] == f"[{first['ece_low']:.3f},{first['ece_high']:.3f}]"
    assert row[6] == f"{first['hypothesis_ece']:.4f}"
    assert re.search(r"^hard: best ECE at T=[0-9.]+, best hypothesis ECE at T=[0-9.]+, best NLL at "
                     r"T=[0-9.]+, best BLEU at T=[0-9.]+$", result.stdout, re.M)
    assert "sacreBLEU signature: nrefs:1" in result.stdout
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,temperature,bleu,nll,") and len(csv_lines) == 7
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["points.jsonl", "sweep.csv", "sweep.json",
                                                     "sweep.png"]


@pytest.mark.parametrize("temperature", [0.8, 1.6])
def test_equals_fairseq_generate_with_calibration_hook(swept, bible, hard_checkpoint, tmp_path,
                                                       temperature):
    _, _, summary = swept
    hook = tmp_path / "cal.json"
    generated = run([command("fairseq-generate"), bible / "bin", "--user-dir", "ls_plugins",
                     "--path", hard_checkpoint, *GEN, "--temperature", temperature,
                     "--task", "translation_calibration", "--scoring", "calibration",
                     "--calibration-json", hook])
    bleu = re.search(r"^Generate valid with beam=2: (BLEU = .*)$", generated.stdout, re.M).group(1)
    ours = point(summary, "hard", temperature)
    assert ours["bleu_string"] == bleu
    expected = json.loads(hook.read_text())
    assert expected["temperature"] == temperature
    assert_same_calibration(ours["calibration"], expected)
    assert [b["count"] for b in ours["calibration"]["bins"]] == [b["count"] for b in expected["bins"]]
    # the hypothesis reading of the same beam search, and the same bootstrap replicates
    assert_same_calibration(ours["hypothesis_calibration"], expected["hypothesis"])
    assert [b["count"] for b in ours["hypothesis_calibration"]["bins"]] == \
        [b["count"] for b in expected["hypothesis"]["bins"]]
    for mine, theirs in ((ours["calibration"], expected),
                         (ours["hypothesis_calibration"], expected["hypothesis"])):
        assert mine["intervals"]["ece"] == pytest.approx(theirs["intervals"]["ece"], abs=1e-6)


def test_nll_at_t1_equals_fairseq_validate(swept, bible, hard_checkpoint):
    _, _, summary = swept
    validate = run([command("fairseq-validate"), bible / "bin", "--user-dir", "ls_plugins",
                    "--task", "translation", "--path", hard_checkpoint, "--valid-subset", "valid",
                    "--cpu", "--max-tokens", "3000", "--required-batch-size-multiple", "1"])
    text = validate.stdout + validate.stderr
    nll_base2 = float(re.search(r"valid on 'valid' subset \|.*?nll_loss ([0-9.]+)", text).group(1))
    assert point(summary, "hard", 1.0)["nll_base2"] == pytest.approx(nll_base2, abs=6e-4)


def test_batched_temperatures(swept, bible, hard_checkpoint, tmp_path):
    """One beam search for all temperatures: BLEU within 0.1, NLL/ECE unchanged."""
    _, _, summary = swept
    sweep(bible, tmp_path / "batched", ("hard", hard_checkpoint), extra=["--temperature-batch", "3"])
    batched = json.loads((tmp_path / "batched" / "sweep.json").read_text())
    for t in TEMPERATURES:
        ours, reference = point(batched, "hard", t), point(summary, "hard", t)
        assert ours["bleu"] == pytest.approx(reference["bleu"], abs=0.1)
        assert_same_calibration(ours["calibration"], reference["calibration"])


def test_resume_skips_finished_points_and_refuses_to_mix_options(swept, bible, hard_checkpoint,
                                                                 tmp_path):
    _, _, summary = swept
    out = tmp_path / "resumed"
    sweep(bible, out, ("hard", hard_checkpoint), temperatures=[1.6])
    first = (out / "points.jsonl").read_text()
    again = sweep(bible, out, ("hard", hard_checkpoint), temperatures=[0.8, 1.6])
    assert "reusing 1 finished point(s)" in again.stderr
    lines = (out / "points.jsonl").read_text()
    assert lines.startswith(first) and len(lines.splitlines()) == 2  # 1.6 was not recomputed
    resumed = json.loads((out / "sweep.json").read_text())
    for t in (0.8, 1.6):
        assert point(resumed, "hard", t)["bleu_string"] == point(summary, "hard", t)["bleu_string"]
        assert_same_calibration(point(resumed, "hard", t)["calibration"],
                                point(summary, "hard", t)["calibration"])
    # other options: recomputed, the earlier points are not mixed in
    wider = sweep(bible, out, ("hard", hard_checkpoint), temperatures=[1.6], extra=["--beam", "3"])
    assert "reusing 0 finished point(s)" in wider.stderr and "2 other point(s)" in wider.stderr
    final = json.loads((out / "sweep.json").read_text())
    assert [p["temperature"] for p in final["points"]] == [1.6]
    assert final["config"]["hard"]["beam"] == 3


def other_dictionary_checkpoint(bible, ls_checkpoint, root, *, langs=("es", "en"), data=None):
    """The LS checkpoint, as if trained on data (``root/bin``) whose dictionaries of ``langs``
    have symbols 10 and 11 swapped (same size); the checkpoint records ``data`` (default: the
    absolute path of ``root/bin``).  Returns the checkpoint, symbol 10 of DATA's dictionary and
    symbol 10 of the checkpoint's."""
    import torch

    import ls_plugins  # noqa: F401  (allowlists fairseq's checkpoint globals)

    (root / "bin").mkdir(parents=True)
    for lang in ("es", "en"):
        symbols = (bible / "bin" / f"dict.{lang}.txt").read_text().splitlines()
        ours = [line.split()[0] for line in symbols]
        if lang in langs:
            symbols[6], symbols[7] = symbols[7], symbols[6]  # file line i is symbol i + 4
        (root / "bin" / f"dict.{lang}.txt").write_text("\n".join(symbols) + "\n")
    state = torch.load(ls_checkpoint, weights_only=True)
    state["cfg"]["task"]["data"] = data or str(root / "bin")
    torch.save(state, root / "checkpoint.pt")
    return root / "checkpoint.pt", ours[6], ours[7]


@pytest.fixture(scope="module")
def other_dictionaries(bible, ls_checkpoint, tmp_path_factory):
    """Checkpoints whose dictionaries differ from DATA's at index 10: both, only the source."""
    root = tmp_path_factory.mktemp("other_dict")
    return {"both": other_dictionary_checkpoint(bible, ls_checkpoint, root / "both"),
            "source": other_dictionary_checkpoint(bible, ls_checkpoint, root / "source",
                                                  langs=("es",))}


@pytest.fixture(scope="module")
def adaptive_softmax_checkpoint(bible, ls_checkpoint, tmp_path_factory):
    """A checkpoint of the tiny transformer with an adaptive softmax (no plain output layer)."""
    import torch

    from conftest import fairseq_setup

    # fairseq cannot reload an adaptive softmax with shared input/output embeddings
    unshared = {"adaptive_softmax_cutoff": "100", "share_all_embeddings": False,
                "share_decoder_input_output_embed": False}
    cfg, task, _ = fairseq_setup(bible / "bin")
    state = torch.load(ls_checkpoint, weights_only=True)
    for key, value in unshared.items():
        setattr(cfg.model, key, value)
        setattr(state["cfg"]["model"], key, value)  # model configs are Namespaces here
    model = task.build_model(cfg.model)
    assert model.decoder.adaptive_softmax is not None
    state["model"] = model.state_dict()
    path = tmp_path_factory.mktemp("adaptive") / "checkpoint.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("extra,message", [
    (["--temperatures", "0"], "--temperatures"),
    (["--temperatures", ","], "--temperatures: must give at least one temperature (with "
                                 "--temperatures and/or --temperature-range), got ','"),
    (["--model", "hard=/nonexistent/checkpoint.pt", "--temperatures", "1"],
     "--model hard: must name an existing file, got /nonexistent/checkpoint.pt (no such file)"),
    (["--gen-subset", "nosuchsplit", "--temperatures", "1"],
     "--gen-subset: must name a subset of"),
    (["--model", "other={both}", "--temperatures", "1"],
     "--model other: must use the target dictionary of DATA"),
    (["--model", "other={source}", "--temperatures", "1"],
     "--model other: must use the source dictionary of DATA"),
    (["--model", "ada={adaptive}", "--temperatures", "1"],
     "--model ada: must be a model with a plain linear output layer, got "),
    (["--temperatures", "1", "--max-tokens", "5"],
     "--max-tokens: must be at least the longest example of 'valid' ("),
])
def test_bad_input_one_line_error_nothing_written(bible, ls_checkpoint, other_dictionaries,
                                                  adaptive_softmax_checkpoint, tmp_path, extra,
                                                  message):
    out = tmp_path / "out"
    paths = {"both": other_dictionaries["both"][0], "source": other_dictionaries["source"][0],
             "adaptive": adaptive_softmax_checkpoint}
    result = run([command("ls-sweep"), bible / "bin", "--output-dir", out, "--model",
                  f"ls={ls_checkpoint}", *GEN, *(a.format(**paths) for a in extra)], check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ls-sweep: error: "), result.stderr[-2000:]
    assert message in lines[0] and "Traceback" not in result.stderr
    if "dictionary of DATA" in message:
        side = "target" if "target" in message else "source"
        _, ours, theirs = other_dictionaries["both" if side == "target" else "source"]
        assert (f"{side} dictionary differs at index 10: {theirs!r} instead of {ours!r}"
                in lines[0]), lines[0]
    if "ada" in message:
        assert f"{adaptive_softmax_checkpoint}, whose decoder uses an adaptive softmax" in lines[0]
    assert not out.exists()


def test_dictionaries_are_compared_by_symbol_when_the_data_path_is_relative(
        bible, ls_checkpoint, tmp_path):
    """A checkpoint that records a relative data directory: its dictionaries are found from the
    working directory or from --model-data, and compared symbol by symbol (same size here);
    when they cannot be found the sweep refuses and says how to provide them."""
    other, ours, theirs = other_dictionary_checkpoint(bible, ls_checkpoint, tmp_path / "rel",
                                                      langs=("en",), data="bin")
    difference = f"target dictionary differs at index 10: {theirs!r} instead of {ours!r}"
    base = [command("ls-sweep"), bible / "bin", "--output-dir", tmp_path / "out", "--model",
            f"rel={other}", "--temperatures", "1", *GEN]
    for extra, cwd, needles in [
            ([], None, ["--model rel: must be a checkpoint whose dictionaries can be found (else "
                        "pass --model-data rel=DIR holding them), got ", "'bin' does not exist"]),
            ([], tmp_path / "rel", ["--model rel: must use the target dictionary", difference]),
            (["--model-data", f"rel={tmp_path / 'rel' / 'bin'}"], None, [difference]),
            (["--model-data", f"rel={tmp_path}"], None,
             [f"--model-data: must name the directory holding the dictionaries of {other}, got "
              f"{tmp_path} ("])]:
        result = run([*base, *extra], check=False, **({"cwd": cwd} if cwd else {}))
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ls-sweep: error: "), result.stderr[-2000:]
        for needle in needles:
            assert needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra,message", [
    (["--temperatures", "-1"], "--temperatures"),
    (["--temperatures", "nan"], "--temperatures"),
    (["--temperatures", "1,inf"], "--temperatures"),
    (["--temperature-range", "2:1:0.5"], "--temperature-range: STOP must be >= START, got '2:1:0.5'"),
    (["--temperature-range", "0.5:2:0"], "--temperature-range"),
    (["--temperature-range", "0.5:2"], "--temperature-range: must be START:STOP:STEP"),
    (["--temperatures", "1", "--beam", "0"], "--beam"),
    (["--temperatures", "1", "--lenpen", "x"], "--lenpen: must be a number, got 'x'"),
    (["--temperatures", "1", "--seed", "-1"], "--seed: must be an integer >= 0, got -1"),
    (["--temperatures", "1", "--calibration-bootstrap", "-1"],
     "--calibration-bootstrap: must be an integer >= 0, got -1"),
    (["--temperatures", "1", "--calibration-seed", "x"],
     "--calibration-seed: must be an integer >= 0, got 'x'"),
    (["--temperatures", "1", "--model", "no-label.pt"], "--model: must be LABEL=PATH, got 'no-label.pt'"),
    (["--temperatures", "1", "--model", "ls=x.pt"], "--model: must give each label once, got 'ls' twice"),
    (["--temperatures", "1", "--sacrebleu-tokenizer", "moses"],
     "--sacrebleu-tokenizer: must be one of "),
    (["--model", "ls=x.pt"], "--temperatures: must give at least one temperature"),
    (["--temperatures", "1", "--model-data", "ls"], "--model-data: must be LABEL=DIR, got 'ls'"),
    (["--temperatures", "1", "--model-data", "hard=."],
     "--model-data: must name a --model label (ls), got 'hard'"),
    (["--temperatures", "1", "--model-data", "ls=/nonexistent"],
     "--model-data ls: must name an existing directory, got /nonexistent (no such directory)"),
    (["--temperatures", "1"], "the following arguments are required: --output-dir"),
])
def test_bad_command_line_in_process(ls_checkpoint, tmp_path, capsys, extra, message):
    """The same checks, in-process (they all run before fairseq is imported)."""
    from ls_plugins.sweep_cli import main

    argv = ["data", "--model", f"ls={ls_checkpoint}", *extra]
    if "--output-dir" not in extra and "--output-dir" not in message:
        argv += ["--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and message in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["file", "unwritable"])
def test_output_dir_checked_before_loading(bible, ls_checkpoint, tmp_path, where):
    """A file, or a directory nothing can be created in (a real write is tried: as root,
    os.access says yes to everything): one line, before anything is loaded."""
    target = tmp_path / "file" if where == "file" else "/proc/ls-sweep-out"
    if where == "file":
        target.write_text("keep")
    result = run([command("ls-sweep"), bible / "bin", "--output-dir", target, "--model",
                  f"ls={ls_checkpoint}", "--temperatures", "1", *GEN], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    allowed = "must name a directory" if where == "file" else "must name a writable directory"
    assert result.stderr.strip().splitlines() == [
        f"ls-sweep: error: --output-dir: {allowed}, got {target} "
        f"({'an existing file' if where == 'file' else 'cannot write in /proc'})"]
    if where == "file":
        assert target.read_text() == "keep"


# -- the pieces, in-process -----------------------------------------------------------------------

def test_parse_temperatures():
    from ls_plugins.sweep_cli import parse_temperatures

    assert parse_temperatures(None, "0.5:2:0.25") == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert parse_temperatures("1.5, 0.7,1", "0.7:0.9:0.1") == [0.7, 0.8, 0.9, 1.0, 1.5]
    assert parse_temperatures("2", "0.1:0.35:0.1") == [0.1, 0.2, 0.3, 2.0]


def test_resume_file_survives_a_torn_line(tmp_path):
    from ls_plugins.sweep import append_point, read_points

    path = tmp_path / "points.jsonl"
    append_point(str(path), {"model": "a", "temperature": 1.0})
    with open(path, "a") as f:
        f.write('{"model": "a", "temper')  # interrupted mid-write
    append_point(str(path), {"model": "a", "temperature": 2.0})
    assert read_points(str(path)) == [{"model": "a", "temperature": 1.0},
                                      {"model": "a", "temperature": 2.0}]


def test_temperature_sweep_figure(tmp_path):
    from ls_plugins.plots import temperature_sweep

    rows = [{"model": m, "temperature": t, "bleu": 20 + t, "ece": abs(t - 1) / 10, "nll": 2 + t,
             "hypothesis_ece": abs(t - 1.2) / 8} for m in ("hard", "ls") for t in (0.5, 1.0, 1.5)]
    temperature_sweep(rows, str(tmp_path / "fig.png"))
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
