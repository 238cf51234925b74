"""ls-vision looking inside (issue 11): the mutual information probe (--mi-every, Fig. 6),
distillation at equal gamma (--match-gamma, Fig. 5), `ls-vision project` (Fig. 1),
`ls-vision plot-mi` and `ls-vision plot-fig5`, on the offline digits set, against numpy
references computed here."""
import json
import math
import os

import numpy as np
import pytest
import torch

from ls_plugins import losses
from ls_plugins.analysis.projection import cluster_tightness_replicates
from ls_plugins.bootstrap import percentile_interval
from ls_plugins.vision import command_line, data, models, probes, train

DIGITS = ["--dataset", "digits", "--quiet"]
K = 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(output_dir, *extra):
    train.main(DIGITS + ["--output-dir", str(output_dir), *map(str, extra)])
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as handle:
        return json.load(handle)


def unaugmented_training_images():
    splits = data.build_splits("digits", augment=False)
    images = torch.stack([image for image, _ in splits.train])
    return images, torch.tensor([label for _, label in splits.train])


def model_of(run_dir):
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    model = models.build_model(checkpoint["model"], 10, 1, 8, **checkpoint.get("architecture", {}))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def numpy_gamma(logits, targets, temperature):
    """gamma = mean over examples of (1 - p_y(T)) K / (K - 1), by hand in float64."""
    z = logits.double().numpy() / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return float(np.mean((1 - p[np.arange(len(targets)), targets.numpy()]) * K / (K - 1)))


def numpy_mutual_information(values):
    """The normalised Gaussian estimate of DESIGN.md, with explicit loops over examples."""
    n, l = values.shape
    mu = values.mean(axis=1)
    var = ((values - mu[:, None]) ** 2).sum() / (n * (l - 1))
    total = 0.0
    for x in range(n):
        for j in range(l):
            y = values[x, j]
            log_all = -(y - mu) ** 2 / (2 * var)
            top = log_all.max()
            total += -(y - mu[x]) ** 2 / (2 * var) - (top + np.log(np.exp(log_all - top).sum()))
    return total / (n * l) + np.log(n)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A weak 1-epoch hard-target teacher (training error ~25%), a 1-epoch label-smoothed
    teacher, both with the probe; students (small MLPs) alone and distilled."""
    root = tmp_path_factory.mktemp("analysis")
    out = {"root": root}
    probe = ["--mi-every", 2, "--mi-examples", 40, "--mi-augmentations", 4, "--mi-classes", "3,8"]
    out["hard"] = (root / "teacher-ls0", run(root / "teacher-ls0", "--epochs", 3, *probe))
    out["smooth"] = (root / "teacher-ls0.1", run(root / "teacher-ls0.1", "--epochs", 3,
                                                  "--label-smoothing", 0.1, *probe))
    return out


def test_probe_estimates_the_mutual_information_of_the_saved_model(runs):
    """Epochs 2 and 3 (every 2nd and the last) and epoch 0 carry an estimate; the last one
    equals the numpy estimate from the final model's logits on the probe's images, which are
    shifted copies of training images: 20 of class 3, 20 of class 8, 4 draws each."""
    run_dir, metrics = runs["hard"]
    probed = [record["epoch"] for record in metrics["history"] if "mutual_information" in record]
    assert probed == [2, 3]
    assert all(record["mi_seconds"] > 0 for record in metrics["history"] if record["epoch"] in probed)
    assert metrics["mutual_information_initial"]["epoch"] == 0
    args = command_line.get_args_parser().parse_args(
        ["--mi-every", "2", "--mi-examples", "40", "--mi-augmentations", "4", "--mi-classes", "3,8"])
    args.epochs = 3
    probe = probes.MutualInformationProbe.from_args(args, data.build_splits("digits"))
    assert probe.images.shape == (160, 1, 8, 8)
    # every probed image is a shift (by at most one pixel, zero fill) of one training image of
    # class 3 (the first 20 examples) or 8 (the last 20), and its 4 draws are not all the same
    originals, labels = unaugmented_training_images()
    padded = torch.nn.functional.pad(originals, (1, 1, 1, 1), value=0.0)  # RandomCrop(8, padding=1)
    shifted = torch.stack([padded[:, :, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)], 1)
    owners, distinct_draws = [], 0
    for example in range(40):
        draws = probe.images[example * 4:(example + 1) * 4]
        distinct_draws += len({tuple(d.flatten().tolist()) for d in draws})
        source = torch.stack([(shifted == d).flatten(2).all(2).any(1) for d in draws]).all(0)
        assert source.any(), example
        owners.append(set(labels[source].tolist()))
    assert owners == [{3}] * 20 + [{8}] * 20
    assert distinct_draws > 40  # the draws differ: the augmentation is random
    with torch.no_grad():
        logits = model_of(run_dir)(probe.images).double()
    values = (logits[:, 3] - logits[:, 8]).view(40, 4).numpy()
    reference = numpy_mutual_information(values)
    assert metrics["history"][-1]["mutual_information"] == pytest.approx(reference, rel=1e-9, abs=1e-12)
    assert 0.0 < reference < math.log(40)


def test_probe_does_not_change_training(runs, tmp_path):
    """The same run without --mi-every has the same history (minus the probe's keys)."""
    _, probed = runs["hard"]
    plain = run(tmp_path / "plain", "--epochs", 3)
    keys = set(train.TIMING_KEYS) | {"mutual_information"}
    strip = lambda history: [{k: v for k, v in r.items() if k not in keys} for r in history]  # noqa: E731
    assert strip(plain["history"]) == strip(probed["history"])


def student(*extra):
    """A small MLP student on digits, 1 epoch."""
    return ("--epochs", 1, "--model", "mlp", "--mlp-depth", 1, "--mlp-width", 32, *extra)


def test_match_gamma_distils_at_the_temperature_whose_gamma_is_the_target(runs, tmp_path, monkeypatch,
                                                                         capsys):
    """The T found (printed, in metrics.json) is the one the loss uses, and the teacher's gamma at
    T over the training images without augmentation, by hand in numpy, is the target to 1e-3."""
    teacher_dir, _ = runs["hard"]
    temperatures = set()
    real = losses.distillation_loss

    def spy(*arguments, **kwargs):
        temperatures.add(kwargs["temperature"])
        return real(*arguments, **kwargs)

    monkeypatch.setattr(losses, "distillation_loss", spy)
    metrics = run(tmp_path / "student", *student("--teacher", teacher_dir / "checkpoint.pt",
                                                 "--match-gamma", 0.5))
    temperature = metrics["args"]["distill_temperature"]
    record = metrics["distillation"]
    assert temperatures == {temperature} and record["temperature"] == temperature
    assert record["target_gamma"] == metrics["args"]["match_gamma"] == 0.5
    assert record["teacher_label_smoothing"] == 0.0 and record["teacher_model"] == "smallcnn"
    images, labels = unaugmented_training_images()
    with torch.no_grad():
        teacher_logits = model_of(teacher_dir)(images)
    measured = numpy_gamma(teacher_logits, labels, temperature)
    assert abs(measured - 0.5) <= 1e-3
    assert record["gamma"] == pytest.approx(measured, abs=1e-6) and record["images"] == len(labels)
    assert numpy_gamma(teacher_logits, labels, 1.0) < 0.45  # T had to move away from 1
    assert f"--match-gamma 0.5: distilling at T={temperature:.4f}" in capsys.readouterr().out


def test_distillation_at_a_given_temperature_records_the_teachers_gamma(runs, tmp_path):
    teacher_dir, _ = runs["smooth"]
    metrics = run(tmp_path / "student", *student("--teacher", teacher_dir / "checkpoint.pt",
                                                 "--distill-temperature", 2))
    record = metrics["distillation"]
    images, labels = unaugmented_training_images()
    with torch.no_grad():
        teacher_logits = model_of(teacher_dir)(images)
    assert (record["temperature"], record["target_gamma"], record["bisection_evaluations"]) == (2.0, None, None)
    assert record["gamma"] == pytest.approx(numpy_gamma(teacher_logits, labels, 2.0), abs=1e-6)
    assert record["teacher_label_smoothing"] == 0.1


def test_unreachable_gamma_is_refused_in_one_line(runs, tmp_path, capsys):
    """A teacher wrong on a fraction e of the training images never goes below e K/(K-1)."""
    teacher_dir, _ = runs["hard"]
    images, labels = unaugmented_training_images()
    with torch.no_grad():
        error = (model_of(teacher_dir)(images).argmax(1) != labels).double().mean().item()
    assert error * K / (K - 1) > 0.02  # precondition: the target below is out of reach
    with pytest.raises(SystemExit) as exit_info:
        train.main(DIGITS + ["--teacher", str(teacher_dir / "checkpoint.pt"), "--match-gamma", "0.01",
                             "--output-dir", str(tmp_path / "student")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("ls-vision: error: --match-gamma: must be reachable by this teacher, whose "
                          "gamma ranged from "), err
    assert err.endswith(", got 0.01\n") and "Traceback" not in err
    assert not (tmp_path / "student").exists()


def test_resumed_run_keeps_its_matched_temperature_and_probe(runs, tmp_path, monkeypatch):
    from ls_plugins import analysis
    from ls_plugins.vision import checkpointing

    teacher = runs["hard"][0] / "checkpoint.pt"
    settings = student("--teacher", teacher, "--match-gamma", 0.4, "--mi-every", 1,
                       "--mi-examples", 20, "--mi-augmentations", 3)
    settings = ("--epochs", 2) + settings[2:]
    full = run(tmp_path / "full", *settings)
    real_save = checkpointing.save

    def killed_after_epoch_1(checkpoint, path):
        real_save(checkpoint, path)
        if checkpoint["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing, "save", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", *settings)
    monkeypatch.setattr(checkpointing, "save", real_save)
    monkeypatch.setattr(analysis, "bisect_temperature", None)  # the resumed run must not bisect again
    resumed = run(tmp_path / "killed", "--resume", tmp_path / "killed" / "checkpoint.pt")
    keys = set(train.TIMING_KEYS) | {"seconds"}
    strip = lambda record: {k: v for k, v in record.items() if k not in keys}  # noqa: E731
    assert [strip(r) for r in resumed["history"]] == [strip(r) for r in full["history"]]
    assert [r["epoch"] for r in resumed["history"] if "mutual_information" in r] == [1, 2]
    assert strip(resumed["distillation"]) == strip(full["distillation"])
    assert strip(resumed["mutual_information_initial"]) == strip(full["mutual_information_initial"])
    assert resumed["args"]["distill_temperature"] == full["args"]["distill_temperature"]


# -- ls-vision project ------------------------------------------------------------------------------
def numpy_tightness(x, y):
    classes = sorted(set(y.tolist()))
    means = {c: x[y == c].mean(0) for c in classes}
    within = np.mean([((x[i] - means[y[i]]) ** 2).sum() for i in range(len(x))])
    between = np.mean([((means[a] - means[b]) ** 2).sum() for a in classes for b in classes if a != b])
    return within / between


def numpy_wrong_template_cv(x, y, weight, bias, classes):
    templates = np.hstack([weight, bias[:, None]])
    ones = np.hstack([x, np.ones((len(x), 1))])
    cvs = []
    for row, label in zip(ones, y):
        d = np.array([np.linalg.norm(row - templates[k]) for k in classes if k != label])
        cvs.append(d.std() / d.mean())
    return float(np.mean(cvs))


def numpy_plane(weight, bias, classes):
    t = np.hstack([weight, bias[:, None]])[classes]
    e1 = (t[1] - t[0]) / np.linalg.norm(t[1] - t[0])
    e2 = (t[2] - t[0]) - ((t[2] - t[0]) @ e1) * e1
    return t.mean(0), np.stack([e1, e2 / np.linalg.norm(e2)])


def test_project_writes_fig1_numbers_and_panels(runs, tmp_path, monkeypatch):
    from ls_plugins import plots

    drawn = {}
    real = plots.projection_figure

    def spy(panels, path, class_names, title=None):
        drawn.update(panels=panels, class_names=class_names)
        real(panels, path, class_names, title)

    monkeypatch.setattr(plots, "projection_figure", spy)
    out = tmp_path / "figures" / "fig1.png"
    dirs = [runs["hard"][0], runs["smooth"][0]]
    assert train.main(["project", *map(str, dirs), "--classes", "3,8,5", "--out", str(out),
                       "--max-per-class", "30", "--bootstrap-seed", "3"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    with open(tmp_path / "figures" / "fig1.json", encoding="utf-8") as handle:
        numbers = json.load(handle)
    assert numbers["classes"] == [3, 8, 5] and numbers["class_names"] == ["3", "8", "5"]
    assert drawn["class_names"] == {3: "3", 8: "8", 5: "5"}
    assert list(drawn["panels"]) == ["α=0", "α=0.1"]
    splits = data.build_splits("digits", augment=False)
    for run_dir, result in zip(dirs, numbers["runs"]):
        model = model_of(run_dir)
        weight = model.last_layer.weight.detach().double().numpy()
        bias = model.last_layer.bias.detach().double().numpy()
        origin, basis = numpy_plane(weight, bias, [3, 8, 5])
        for split, dataset in (("training", splits.train), ("validation", splits.val)):
            keep = [i for i in range(len(dataset)) if dataset[i][1] in (3, 8, 5)]  # bootstrap ids
            images = torch.stack([dataset[i][0] for i in keep])
            y = np.array([dataset[i][1] for i in keep])
            with torch.no_grad():
                x = model.penultimate(images).double().numpy()
            got = result["splits"][split]
            assert got["examples"] == {str(c): int((y == c).sum()) for c in (3, 8, 5)}
            assert got["tightness"] == pytest.approx(numpy_tightness(x, y), rel=1e-9)
            # default --bootstrap 200; ids: the index in the split, so both runs' replicates
            # use the same weights and pair
            replicates = cluster_tightness_replicates(x, y, torch.tensor(keep), 200, 3)
            assert torch.isfinite(replicates).all()
            assert got["tightness_bootstrap"] == {"bootstrap": 200, "seed": 3, "paired": True,
                                                  "replicates": pytest.approx(replicates.tolist(),
                                                                              rel=1e-9)}
            assert got["tightness_interval"] == pytest.approx(
                list(percentile_interval(replicates, 0.95)), rel=1e-9)
            cv = got["wrong_template_distance_cv"]
            assert cv["all_classes"] == pytest.approx(numpy_wrong_template_cv(x, y, weight, bias, range(K)), rel=1e-9)
            assert cv["three_classes"] == pytest.approx(numpy_wrong_template_cv(x, y, weight, bias, [3, 8, 5]), rel=1e-9)
            points = (np.hstack([x, np.ones((len(x), 1))]) - origin) @ basis.T
            assert got["tightness_in_plane"] == pytest.approx(numpy_tightness(points, y), rel=1e-9)
            panel = drawn["panels"][result["label"]][split]
            assert panel["tightness"] == got["tightness"]
            assert sorted(np.unique(panel["labels"]).tolist()) == [3, 5, 8]
            assert max(np.bincount(panel["labels"])) == 30 == got["drawn"] / 3  # capped
            for point, label in zip(panel["points"], panel["labels"]):  # each is some example's
                nearest = np.abs(points - point).sum(1).argmin()
                assert np.allclose(points[nearest], point, atol=1e-9) and y[nearest] == label
            templates = (np.hstack([weight, bias[:, None]])[[3, 8, 5]] - origin) @ basis.T
            assert np.allclose(panel["templates"], templates, atol=1e-9)
    assert numbers["bootstrap_ids"] == "index of an example in its split, shared by every run"
    train.main(["project", *map(str, dirs), "--classes", "3,8,5", "--out", str(tmp_path / "f.png"),
                "--bootstrap", "0"])
    with open(tmp_path / "f.json", encoding="utf-8") as handle:
        without = json.load(handle)
    for result, plain in zip(numbers["runs"], without["runs"]):  # --bootstrap 0: no interval
        for split in ("training", "validation"):
            assert plain["splits"][split]["tightness"] == result["splits"][split]["tightness"]
            assert {"tightness_interval", "tightness_bootstrap"}.isdisjoint(plain["splits"][split])


def test_label_smoothing_gives_tighter_training_clusters_on_digits(tmp_path):
    """Paper section 2 in the regime it describes (a network trained until it fits its training
    split: an MLP, 60 epochs, no augmentation): with alpha = 0.1 the training split's clusters of
    3, 8 and 5 are tighter than with hard targets, in the penultimate space and on the plane."""
    settings = ("--model", "mlp", "--mlp-depth", 2, "--mlp-width", 128, "--optimizer", "adam",
                "--epochs", 60, "--no-augment")
    for alpha in (0, 0.1):
        run(tmp_path / f"ls{alpha}", *settings, "--label-smoothing", alpha)
    out = tmp_path / "fig1.png"
    train.main(["project", str(tmp_path / "ls0"), str(tmp_path / "ls0.1"), "--classes", "3,8,5",
                "--out", str(out)])
    with open(tmp_path / "fig1.json", encoding="utf-8") as handle:
        hard, smooth = (r["splits"]["training"] for r in json.load(handle)["runs"])
    assert smooth["tightness"] < 0.95 * hard["tightness"]
    assert smooth["tightness_in_plane"] < 0.8 * hard["tightness_in_plane"]


def test_plot_mi_draws_every_estimate_of_each_run(runs, tmp_path, monkeypatch):
    from ls_plugins import plots

    drawn = {}
    monkeypatch.setattr(plots, "mutual_information_figure",
                        lambda curves, path, n_examples: drawn.update(curves=curves, n=n_examples))
    assert train.main(["plot-mi", str(runs["hard"][0]), str(runs["smooth"][0]),
                       "--out", str(tmp_path / "fig6.png")]) == 0
    assert drawn["n"] == 40 and list(drawn["curves"]) == ["α=0", "α=0.1"]
    for name, label in (("hard", "α=0"), ("smooth", "α=0.1")):
        metrics = runs[name][1]
        expected = [(0, metrics["mutual_information_initial"]["mutual_information"])] + [
            (r["epoch"], r["mutual_information"]) for r in metrics["history"] if r["epoch"] in (2, 3)]
        assert drawn["curves"][label] == expected


@pytest.fixture(scope="module")
def fig5_runs(runs):
    """Students (MLPs) alone at alpha 0 and 0.1, from the hard teacher at gamma 0.3 (matched) and
    from the label-smoothed teacher at T = 1."""
    root = runs["root"]
    hard, smooth = (runs[name][0] / "checkpoint.pt" for name in ("hard", "smooth"))
    made = {"student-ls0": student(), "student-ls0.1": student("--label-smoothing", 0.1),
            "student-hard-teacher": student("--teacher", hard, "--match-gamma", 0.3),
            "student-ls-teacher": student("--teacher", smooth)}
    return {name: (root / name, run(root / name, *options)) for name, options in made.items()}


def test_plot_fig5_classifies_each_run(runs, fig5_runs, tmp_path, monkeypatch):
    from ls_plugins import plots

    drawn = {}
    monkeypatch.setattr(plots, "equal_gamma_figure",
                        lambda series, path, metric_name: drawn.update(series=series, metric=metric_name))
    everything = {"teacher-ls0": runs["hard"], "teacher-ls0.1": runs["smooth"], **fig5_runs}
    out = tmp_path / "fig5.png"
    assert train.main(["plot-fig5", *(str(d) for d, _ in everything.values()), "--out", str(out)]) == 0
    accuracy = {name: metrics["final"]["test_accuracy"] for name, (_, metrics) in everything.items()}
    series = {curve: sorted(points) for curve, points in drawn["series"].items()}
    gamma = {name: fig5_runs[name][1]["distillation"]["gamma"]
             for name in ("student-hard-teacher", "student-ls-teacher")}
    assert abs(gamma["student-hard-teacher"] - 0.3) <= 1e-3
    assert series == {
        "teacher": sorted([(0.0, accuracy["teacher-ls0"]), (0.1, accuracy["teacher-ls0.1"])]),
        "student_ls": sorted([(0.0, accuracy["student-ls0"]), (0.1, accuracy["student-ls0.1"])]),
        "student_hard_teacher": [(gamma["student-hard-teacher"], accuracy["student-hard-teacher"])],
        "student_ls_teacher": [(gamma["student-ls-teacher"], accuracy["student-ls-teacher"])]}
    assert drawn["metric"] == "test accuracy"
    with open(tmp_path / "fig5.json", encoding="utf-8") as handle:
        points = json.load(handle)["points"]
    assert {os.path.basename(p["run"]): p["curve"] for p in points} == {
        "teacher-ls0": "teacher", "teacher-ls0.1": "teacher", "student-ls0": "student_ls",
        "student-ls0.1": "student_ls", "student-hard-teacher": "student_hard_teacher",
        "student-ls-teacher": "student_ls_teacher"}
    # without the distilled runs nothing marks the smallcnn runs as teachers
    assert train.main(["plot-fig5", str(runs["hard"][0]), str(fig5_runs["student-ls0"][0]),
                       "--out", str(out)]) == 0
    assert set(drawn["series"]) == {"student_ls"}


# -- bad input ----------------------------------------------------------------------------------------
class RunsCode:
    """Unpickling calls ``function(*arguments)``: a checkpoint that wants to run code."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


@pytest.fixture(scope="module")
def bad_files(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "garbage.pt").write_bytes(os.urandom(256))
    (root / "a_file").write_text("x")
    torch.save({"model": RunsCode(os.system, f"touch {root / 'pwned'}")}, root / "system.pt")
    model = models.build_model("smallcnn", 100, 1, 8)
    torch.save({"model": "smallcnn", "num_classes": 100, "in_channels": 1, "image_size": 8,
                "dataset": "digits", "state_dict": model.state_dict(), "args": {}}, root / "k100.pt")
    unprobed = root / "unprobed"
    run(unprobed, "--epochs", 1, "--model", "mlp", "--mlp-depth", 1, "--mlp-width", 8)
    (root / "old_distilled").mkdir()
    (root / "old_distilled" / "metrics.json").write_text(json.dumps(dict(
        runs["hard"][1], args=dict(runs["hard"][1]["args"], teacher="t.pt", distill_temperature=1.0,
                                   distill_weight=1.0))))
    unfinished = root / "unfinished"
    unfinished.mkdir()
    (unfinished / "metrics.json").write_text(json.dumps({k: v for k, v in runs["hard"][1].items()
                                                         if k != "final"}))
    return {"root": str(root), "hard": str(runs["hard"][0]), "smooth": str(runs["smooth"][0]),
            "empty": str(root / "empty"), "garbage": str(root / "garbage.pt"),
            "file": str(root / "a_file"), "k100": str(root / "k100.pt"), "unprobed": str(unprobed),
            "system": str(root / "system.pt"),
            "old_distilled": str(root / "old_distilled"), "unfinished": str(unfinished)}


BAD_COMMANDS = {
    # ls-vision project
    "project: two classes": (["project", "{hard}", "--classes", "0,2", "--out", "{out}"],
                             "ls-vision project: error: --classes: must be exactly 3 distinct class indices, got [0, 2]"),
    "project: a repeated class": (["project", "{hard}", "--classes", "0,2,2", "--out", "{out}"],
                                  "ls-vision project: error: --classes: must be exactly 3 distinct class indices, got [0, 2, 2]"),
    "project: four classes": (["project", "{hard}", "--classes", "0,1,2,3", "--out", "{out}"],
                              "ls-vision project: error: --classes: must be exactly 3 distinct class indices, got [0, 1, 2, 3]"),
    "project: class out of range": (["project", "{hard}", "--classes", "0,2,10", "--out", "{out}"],
                                    "ls-vision project: error: --classes: class indices must lie in [0, 10), got [0, 2, 10]"),
    "project: classes not numbers": (["project", "{hard}", "--classes", "shirt,coat,bag", "--out", "{out}"],
                                     "ls-vision project: error: --classes: must be three class indices separated by "
                                     "commas, e.g. 0,2,6, got 'shirt,coat,bag'"),
    "project: negative class": (["project", "{hard}", "--classes=-1,2,3", "--out", "{out}"],
                                "ls-vision project: error: --classes: must be three class indices"),
    "project: no classes": (["project", "{hard}", "--out", "{out}"],
                            "ls-vision project: error: the following arguments are required: --classes"),
    "project: run without a checkpoint": (["project", "{empty}", "--classes", "0,2,6", "--out", "{out}"],
                                          "ls-vision project: error: RUN: must name an existing file, got "
                                          "{empty}/checkpoint.pt (no such file)"),
    "project: random bytes": (["project", "{garbage}", "--classes", "0,2,6", "--out", "{out}"],
                              "ls-vision project: error: RUN: must name an ls-vision checkpoint, got {garbage} ("),
    "project: a checkpoint that runs code": (["project", "{hard}", "{system}", "--classes", "0,2,6", "--out", "{out}"],
                                             "ls-vision project: error: RUN: must name an ls-vision checkpoint, got "
                                             "{system} (refused: the checkpoint asks for the global posix.system"),
    "project: runs of different models": (["project", "{hard}", "{k100}", "--classes", "0,2,6", "--out", "{out}"],
                                          "ls-vision project: error: RUN: must share num_classes with {hard} (10), "
                                          "got {k100} (100)"),
    "project: max-per-class 0": (["project", "{hard}", "--classes", "0,2,6", "--out", "{out}", "--max-per-class", "0"],
                                 "ls-vision project: error: --max-per-class: must be an integer >= 1, got 0"),
    "project: negative bootstrap": (["project", "{hard}", "--classes", "0,2,6", "--out", "{out}", "--bootstrap", "-1"],
                                    "ls-vision project: error: --bootstrap: must be an integer >= 0, got -1"),
    "project: bootstrap not an integer": (["project", "{hard}", "--classes", "0,2,6", "--out", "{out}", "--bootstrap", "many"],
                                          "ls-vision project: error: --bootstrap: must be an integer >= 0, got 'many'"),
    "project: negative bootstrap seed": (["project", "{hard}", "--classes", "0,2,6", "--out", "{out}", "--bootstrap-seed=-2"],
                                         "ls-vision project: error: --bootstrap-seed: must be an integer >= 0, got -2"),
    "project: out a directory": (["project", "{hard}", "--classes", "0,2,6", "--out", "{empty}"],
                                 "ls-vision project: error: --out: must name a file, got {empty} (a directory)"),
    "project: out below a file": (["project", "{hard}", "--classes", "0,2,6", "--out", "{file}/fig1.png"],
                                  "ls-vision project: error: --out: must name a file in a directory that can be "
                                  "written or created, got {file}/fig1.png"),
    "project: json is out": (["project", "{hard}", "--classes", "0,2,6", "--out", "{out}", "--json", "{out}"],
                             "ls-vision project: error: --json: must differ from --out, got {out}"),
    # ls-vision plot-mi
    "plot-mi: run without metrics.json": (["plot-mi", "{empty}", "--out", "{out}"],
                                          "ls-vision plot-mi: error: RUN_DIR: must be an ls-vision output directory "
                                          "holding a run's metrics.json, got {empty} ([Errno 2] No such file"),
    "plot-mi: run without the probe": (["plot-mi", "{hard}", "{unprobed}", "--out", "{out}"],
                                       "ls-vision plot-mi: error: RUN_DIR: must be a run trained with --mi-every, "
                                       "got {unprobed} (no mutual information in its metrics.json)"),
    "plot-mi: no runs": (["plot-mi", "--out", "{out}"],
                         "ls-vision plot-mi: error: the following arguments are required: RUN_DIR"),
    "plot-mi: out a directory": (["plot-mi", "{hard}", "--out", "{empty}"],
                                 "ls-vision plot-mi: error: --out: must name a file, got {empty} (a directory)"),
    # ls-vision plot-fig5
    "plot-fig5: run without metrics.json": (["plot-fig5", "{hard}", "{empty}", "--out", "{out}"],
                                            "ls-vision plot-fig5: error: RUN_DIR: must be an ls-vision output "
                                            "directory holding a finished run's metrics.json, got {empty} ([Errno 2]"),
    "plot-fig5: unfinished run": (["plot-fig5", "{unfinished}", "--out", "{out}"],
                                  "ls-vision plot-fig5: error: RUN_DIR: must be an ls-vision output directory holding "
                                  "a finished run's metrics.json, got {unfinished} (no final metrics"),
    "plot-fig5: distilled without a record": (["plot-fig5", "{old_distilled}", "--out", "{out}"],
                                              "ls-vision plot-fig5: error: RUN_DIR: must be a distilled run whose "
                                              "metrics.json records the teacher's gamma"),
    "plot-fig5: unknown metric": (["plot-fig5", "{hard}", "--out", "{out}", "--metric", "bleu"],
                                  "ls-vision plot-fig5: error: --metric: must be one of test_accuracy, val_accuracy, "
                                  "test_nll, test_ece, test_ece_scaled, got 'bleu'"),
}


@pytest.mark.parametrize("name", list(BAD_COMMANDS))
def test_bad_input_is_one_line(name, bad_files, tmp_path, capsys, monkeypatch):
    """Exit code 2, exactly the one line, nothing written, and no data loaded."""
    monkeypatch.setattr(data, "build_splits", None)
    values = dict(bad_files, out=str(tmp_path / "fig.png"))
    arguments, message = BAD_COMMANDS[name]
    before = sorted(os.walk(tmp_path)), sorted(os.walk(bad_files["root"]))
    with pytest.raises(SystemExit) as exit_info:
        train.main([a.format(**values) for a in arguments])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(message.format(**values)), err
    assert (sorted(os.walk(tmp_path)), sorted(os.walk(bad_files["root"]))) == before
    assert not os.path.exists(os.path.join(bad_files["root"], "pwned"))
