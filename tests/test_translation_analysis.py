"""``ls-nmt-analysis``: the projection of decoder hidden states (Fig. 1 for translation), the
temperature matching a teacher's gamma (Fig. 5), the Fig. 5 plot, and their refusals.

References are computed here independently: the model is loaded by fairseq's own loader, its
decoder run with ``features_only=True`` on fairseq's own batches, the positions selected here.
"""
import json

import pytest
import torch

from conftest import command, fairseq_setup, run
from test_untrusted_checkpoints import assert_refused, malicious_checkpoint

from ls_plugins.analysis import cluster_tightness, wrong_template_distance_cv
from ls_plugins.analysis.projection import cluster_tightness_replicates
from ls_plugins.bootstrap import percentile_interval
from ls_plugins.losses import equivalent_smoothing

TOKENS = ("\u2581the", "\u2581of", "\u2581and")  # as the dictionary writes them


@pytest.fixture(scope="module")
def reference(bible, ls_checkpoint):
    """fairseq's own loading of the tiny LS model, and per split its teacher-forced decoder
    states and logits at every non-pad target position, with the targets (and on valid each
    position's example id and target column)."""
    from fairseq import checkpoint_utils, tasks

    cfg, _, _ = fairseq_setup(bible / "bin")
    task = tasks.setup_task(cfg.task)
    models, _ = checkpoint_utils.load_model_ensemble([str(ls_checkpoint)], task=task)
    model = models[0].eval()
    out = {"task": task, "model": model}
    for split in ("valid", "train"):  # valid: states, logits, targets; train: targets
        task.load_dataset(split)
        itr = task.get_batch_iterator(dataset=task.dataset(split), max_tokens=3000,
                                      required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
        found = {"states": [], "logits": [], "targets": [], "examples": [], "columns": []}
        with torch.no_grad():
            for sample in itr:
                keep = sample["target"].ne(task.target_dictionary.pad())
                found["targets"].append(sample["target"][keep])
                if split == "train":
                    continue
                rows, columns = keep.nonzero(as_tuple=True)
                found["examples"].append(sample["id"][rows])
                found["columns"].append(columns)
                net_input = sample["net_input"]
                encoder_out = model.encoder(net_input["src_tokens"],
                                            src_lengths=net_input["src_lengths"])
                hidden, _ = model.decoder(net_input["prev_output_tokens"],
                                          encoder_out=encoder_out, features_only=True)
                found["states"].append(hidden[keep])
                found["logits"].append(model(**net_input)[0][keep])
        out[split] = {key: torch.cat(values) for key, values in found.items() if values}
    return out


def nmt_analysis(*args, check=True):
    return run([command("ls-nmt-analysis"), *args], check=check)


def one_error_line(result, *words):
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert all(word in lines[0] for word in words), lines[0]
    return lines[0]


# -- project ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def projected(bible, ls_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("project") / "fig1.png"
    result = nmt_analysis("project", bible / "bin", "--model", f"ls={ls_checkpoint}",
                          "--tokens", "the,\u2581of,and", "--splits", "train,valid",
                          "--max-per-token", "300", "--seed", "3", "--bootstrap-seed", "4",
                          "--cpu", "--out", out)
    return out, json.loads(out.with_suffix(".json").read_text()), result.stdout


def valid_in_draw_order(reference, ids):
    """The reference's valid states and targets at the tokens ``ids``, in the order the command
    draws them when it keeps every position: token by token, then by example id and column."""
    valid = reference["valid"]
    token_rank = torch.full((int(valid["targets"].max()) + 1,), len(ids))
    token_rank[torch.tensor(ids)] = torch.arange(len(ids))
    chosen = torch.isin(valid["targets"], torch.tensor(ids)).nonzero().squeeze(1)
    key = [(int(token_rank[valid["targets"][i]]), int(valid["examples"][i]),
            int(valid["columns"][i])) for i in chosen]
    order = chosen[sorted(range(len(chosen)), key=key.__getitem__)]
    return valid["states"][order], valid["targets"][order]


def test_project_tightness_equals_independent_hidden_states(projected, reference):
    """On valid (every position kept, as no token occurs 300 times there) the JSON's tightness
    and wrong-template CV are those of the decoder states this test computes itself."""
    _, report, stdout = projected
    task, model = reference["task"], reference["model"]
    ids = [task.target_dictionary.index(t) for t in TOKENS]
    assert report["tokens"] == list(TOKENS) and report["token_indices"] == ids
    valid = reference["valid"]
    chosen = torch.isin(valid["targets"], torch.tensor(ids))
    states, labels = valid["states"][chosen], valid["targets"][chosen]
    counts = {t: int((labels == i).sum()) for t, i in zip(TOKENS, ids)}
    assert max(counts.values()) < 300 and min(counts.values()) > 0  # premise: no draw on valid
    assert report["splits"]["valid"] == {"available": counts, "used": counts}
    numbers = report["models"]["ls"]["valid"]
    assert numbers["tightness"] == pytest.approx(cluster_tightness(states, labels), rel=1e-5)
    weight = model.decoder.output_projection.weight
    assert numbers["wrong_template_distance_cv"] == pytest.approx(
        wrong_template_distance_cv(states, labels, weight, None, classes=ids), rel=1e-4)
    assert f"{numbers['tightness']:.4f}" in stdout


def test_project_tightness_interval_is_that_of_its_replicates_over_the_draw(projected, reference):
    """Default --bootstrap 200: the replicates are those of the independent states weighted by
    position ids 0..M-1 in draw order (seed 4), the interval their 95% percentile interval."""
    _, report, stdout = projected
    ids = [reference["task"].target_dictionary.index(t) for t in TOKENS]
    states, labels = valid_in_draw_order(reference, ids)
    numbers = report["models"]["ls"]["valid"]
    assert numbers["tightness_bootstrap"]["bootstrap"] == 200
    assert numbers["tightness_bootstrap"]["seed"] == 4 and numbers["tightness_bootstrap"]["paired"]
    replicates = torch.tensor(numbers["tightness_bootstrap"]["replicates"], dtype=torch.float64)
    expected = cluster_tightness_replicates(states, labels, torch.arange(len(labels)), 200, 4)
    assert torch.isfinite(expected).all()
    assert replicates.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    low, high = numbers["tightness_interval"]
    assert (low, high) == pytest.approx(percentile_interval(expected, 0.95), rel=1e-5)
    assert low < numbers["tightness"] < high
    assert f"[{low:.4f}, {high:.4f}]" in stdout


@pytest.fixture(scope="module")
def rescaled_checkpoint(ls_checkpoint, tmp_path_factory):
    """The LS model with the affine weights of its decoder's last layer norm (the final op of
    the post-norm layer) multiplied per dimension by ``scale``: its hidden states are the LS
    model's times ``scale``, another cluster geometry known exactly."""
    import ls_plugins  # noqa: F401  (allowlists fairseq checkpoints' globals)

    checkpoint = torch.load(ls_checkpoint, weights_only=True)
    state = checkpoint["model"]
    scale = torch.linspace(0.2, 3.0, state["decoder.layers.0.final_layer_norm.weight"].numel())
    for key in ("decoder.layers.0.final_layer_norm.weight", "decoder.layers.0.final_layer_norm.bias"):
        state[key] = state[key] * scale
    path = tmp_path_factory.mktemp("rescaled") / "checkpoint_rescaled.pt"
    torch.save(checkpoint, path)
    return path, scale


def test_project_replicates_of_two_models_pair_on_the_same_positions(bible, ls_checkpoint,
                                                                     rescaled_checkpoint,
                                                                     reference, tmp_path):
    """Replicate r of both models weighs the same positions alike: each model's replicates are
    those recomputed from its own states with the same ids 0..M-1 and seed."""
    path, scale = rescaled_checkpoint
    out = tmp_path / "fig1.png"
    nmt_analysis("project", bible / "bin", "--model", f"ls={ls_checkpoint}", "--model",
                 f"scaled={path}", "--tokens", "the,of,and", "--splits", "valid",
                 "--bootstrap", "40", "--bootstrap-seed", "7", "--cpu", "--out", out)
    report = json.loads(out.with_suffix(".json").read_text())
    ids = [reference["task"].target_dictionary.index(t) for t in TOKENS]
    states, labels = valid_in_draw_order(reference, ids)
    positions = torch.arange(len(labels))
    found = {}
    for label, model_states in (("ls", states), ("scaled", states * scale)):
        numbers = report["models"][label]["valid"]
        assert numbers["tightness"] == pytest.approx(cluster_tightness(model_states, labels), rel=1e-5)
        bootstrap = numbers["tightness_bootstrap"]
        assert (bootstrap["bootstrap"], bootstrap["seed"], bootstrap["paired"]) == (40, 7, True)
        found[label] = torch.tensor(bootstrap["replicates"], dtype=torch.float64)
        expected = cluster_tightness_replicates(model_states, labels, positions, 40, 7)
        assert found[label].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert report["models"]["ls"]["valid"]["tightness"] != pytest.approx(
        report["models"]["scaled"]["valid"]["tightness"], rel=1e-2)  # premise: two geometries


def test_project_draws_at_most_max_per_token_on_train(projected, reference):
    """Train holds more than 300 of each token: 300 are drawn, from the right population."""
    _, report, _ = projected
    ids = [reference["task"].target_dictionary.index(t) for t in TOKENS]
    targets = reference["train"]["targets"]
    available = {t: int((targets == i).sum()) for t, i in zip(TOKENS, ids)}
    assert min(available.values()) > 300
    assert report["splits"]["train"] == {"available": available, "used": {t: 300 for t in TOKENS}}
    tightness = report["models"]["ls"]["train"]["tightness"]
    assert 0 < tightness and tightness != report["models"]["ls"]["valid"]["tightness"]


def test_project_writes_a_png_with_one_panel_per_split(projected):
    out, _, _ = projected
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 1.2 * height  # one row (one model), two columns (train, valid)


@pytest.mark.parametrize("options,words", [
    (["--tokens", "the,of,zzqx"], ["--tokens", "'zzqx'", "target dictionary"]),
    (["--tokens", "the,\u2581the,of"], ["--tokens", "distinct dictionary symbols"]),
    (["--tokens", "the,of"], ["--tokens", "three"]),
    (["--bootstrap", "-1"], ["--bootstrap: must be an integer >= 0, got -1"]),
    (["--bootstrap", "2.5"], ["--bootstrap: must be an integer >= 0, got '2.5'"]),
    (["--bootstrap-seed", "-3"], ["--bootstrap-seed: must be an integer >= 0, got -3"]),
])
def test_project_bad_options_one_line_nothing_written(bible, ls_checkpoint, tmp_path, options,
                                                      words):
    """``options`` come last: a repeated option's last value is the one argparse keeps."""
    out = tmp_path / "fig.png"
    result = nmt_analysis("project", bible / "bin", "--model", f"ls={ls_checkpoint}",
                          "--tokens", "the,of,and", "--splits", "valid", "--cpu", "--out", out,
                          *options, check=False)
    one_error_line(result, "ls-nmt-analysis project: error:", *words)
    assert list(tmp_path.iterdir()) == []


def test_project_refuses_an_ensemble_and_a_non_png(bible, ls_checkpoint, tmp_path):
    result = nmt_analysis("project", bible / "bin", "--model", f"a={ls_checkpoint}:{ls_checkpoint}",
                          "--tokens", "the,of,and", "--out", tmp_path / "f.png", check=False)
    one_error_line(result, "--model a: must be one checkpoint")
    result = nmt_analysis("project", bible / "bin", "--model", f"a={ls_checkpoint}",
                          "--tokens", "the,of,and", "--out", tmp_path / "f.jpg", check=False)
    one_error_line(result, "--out: must name a .png file")
    assert list(tmp_path.iterdir()) == []


# -- match-gamma --------------------------------------------------------------------------------

def test_match_gamma_reaches_the_target_measured_independently(bible, ls_checkpoint, reference,
                                                               tmp_path):
    """The gamma at the returned T, from the model's own logits (losses.equivalent_smoothing),
    is the target within 1e-3; recomputing every batch (--cache-mb 0) gives the same T."""
    logits, targets = reference["valid"]["logits"], reference["valid"]["targets"]
    target = equivalent_smoothing(logits, targets, 1.7)  # a gamma this teacher reaches
    found = {}
    for cache in ("2048", "0"):
        out = tmp_path / f"match-{cache}.json"
        result = nmt_analysis("match-gamma", bible / "bin", "--teacher-path", ls_checkpoint,
                              "--gamma", repr(target), "--split", "valid", "--cache-mb", cache,
                              "--cpu", "--out", out)
        found[cache] = json.loads(out.read_text())
        assert f"T = {found[cache]['temperature']:.6g}" in result.stdout
    report = found["2048"]
    assert report["cached_batches"] == report["batches"] > 1 and found["0"]["cached_batches"] == 0
    assert found["0"]["temperature"] == report["temperature"]
    reached = equivalent_smoothing(logits, targets, report["temperature"])
    assert abs(reached - target) <= 1e-3
    assert report["gamma"] == pytest.approx(reached, abs=1e-6)
    assert report["positions"] == targets.numel()
    assert report["evaluations"] == len(report["history"]) >= 3


def test_match_gamma_from_the_teacher_itself_gives_its_gamma_at_t1(bible, ls_checkpoint,
                                                                    reference, tmp_path):
    """--gamma-from-teacher measures that checkpoint's gamma at T=1; matching a teacher to
    itself then lands where its gamma is its own gamma at T=1."""
    logits, targets = reference["valid"]["logits"], reference["valid"]["targets"]
    out = tmp_path / "match.json"
    nmt_analysis("match-gamma", bible / "bin", "--teacher-path", ls_checkpoint,
                 "--gamma-from-teacher", ls_checkpoint, "--split", "valid", "--tol", "1e-5",
                 "--cpu", "--out", out)
    report = json.loads(out.read_text())
    at_one = equivalent_smoothing(logits, targets, 1.0)
    assert report["gamma_from_teacher"]["gamma"] == pytest.approx(at_one, abs=1e-6)
    assert report["target_gamma"] == report["gamma_from_teacher"]["gamma"]
    assert abs(equivalent_smoothing(logits, targets, report["temperature"]) - at_one) <= 1e-5 + 1e-6


@pytest.mark.parametrize("gamma,words", [
    ("0", ["--gamma: must be in (0, 1), got 0.0"]),
    ("1", ["--gamma: must be in (0, 1), got 1.0"]),
    ("-0.2", ["--gamma: must be in (0, 1)"]),
    ("1e-6", ["--gamma: must be reachable by this teacher", "got 1e-06"]),
])
def test_match_gamma_refuses_gamma_outside_0_1_or_out_of_reach(bible, ls_checkpoint, tmp_path,
                                                               gamma, words):
    out = tmp_path / "m.json"
    result = nmt_analysis("match-gamma", bible / "bin", "--teacher-path", ls_checkpoint,
                          f"--gamma={gamma}", "--split", "valid", "--cpu", "--out", out, check=False)
    one_error_line(result, "ls-nmt-analysis match-gamma: error:", *words)
    assert not out.exists()


# -- untrusted checkpoints ----------------------------------------------------------------------

@pytest.mark.parametrize("where", ["project --model", "match-gamma --teacher-path",
                                   "match-gamma --gamma-from-teacher"])
def test_untrusted_checkpoint_refused_before_its_code_runs(bible, ls_checkpoint, tmp_path, where):
    evil, marker = malicious_checkpoint(tmp_path, "open")
    if where == "project --model":
        args = ["project", bible / "bin", "--model", f"ls={ls_checkpoint}", "--model",
                f"evil={evil}", "--tokens", "the,of,and", "--out", tmp_path / "f.png"]
    elif where == "match-gamma --teacher-path":
        args = ["match-gamma", bible / "bin", "--teacher-path", evil, "--gamma", "0.5"]
    else:
        args = ["match-gamma", bible / "bin", "--teacher-path", ls_checkpoint,
                "--gamma-from-teacher", evil]
    result = nmt_analysis(*args, "--cpu", check=False)
    assert_refused(result, marker, "io.open")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil-open.pt"]


# -- plot-gamma ---------------------------------------------------------------------------------

def test_plot_gamma_draws_the_points_and_skips_missing_values(tmp_path):
    points = tmp_path / "points.tsv"
    points.write_text("curve\tgamma\tvalue\n"
                      "teacher\t0\t20.5\nteacher\t0.1\t21.0\n"
                      "student_ls\t0\t15.0\nstudent_ls\t0.1\t15.5\n"
                      "student_hard_teacher\t0.1012\t16.2\nstudent_ls_teacher\t0.0987\t-\n")
    result = nmt_analysis("plot-gamma", points, "--metric", "BLEU", "--out", tmp_path / "fig5.png")
    assert "(5 points)" in result.stdout
    assert (tmp_path / "fig5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text,words", [
    ("curve\tgamma\n", ["points: must be a TSV with a header"]),
    ("curve\tgamma\tvalue\nteacher\tzero\t1\n", ["points: must hold numbers", "line 2"]),
    ("curve\tgamma\tvalue\nteacher\t0\t-\n", ["points: must hold at least one point"]),
])
def test_plot_gamma_bad_table_one_line(tmp_path, text, words):
    points = tmp_path / "points.tsv"
    points.write_text(text)
    result = nmt_analysis("plot-gamma", points, "--out", tmp_path / "f.png", check=False)
    one_error_line(result, "ls-nmt-analysis plot-gamma: error:", *words)
    assert not (tmp_path / "f.png").exists()


def test_sample_positions_caps_each_token_reproducibly():
    """At most the cap per token, drawn from that token's rows (all rows when fewer), the same
    rows for the same seed and others for another seed."""
    from ls_plugins.decoder_states import sample_positions

    tokens = torch.tensor([5] * 50 + [7] * 3 + [9] * 20)
    positions = torch.stack([torch.arange(73) // 4, torch.arange(73) % 4, tokens], dim=1)
    drawn = sample_positions(positions, [9, 5, 7], 10, seed=1)
    assert [int((drawn[:, 2] == t).sum()) for t in (5, 7, 9)] == [10, 3, 10]
    rows = {tuple(r) for r in positions.tolist()}
    assert all(tuple(r) in rows for r in drawn.tolist()) and len({tuple(r) for r in drawn.tolist()}) == 23
    assert torch.equal(drawn, sample_positions(positions, [9, 5, 7], 10, seed=1))
    assert not torch.equal(drawn, sample_positions(positions, [9, 5, 7], 10, seed=2))
    assert torch.equal(sample_positions(positions, [5, 7, 9], None, seed=1), positions)
