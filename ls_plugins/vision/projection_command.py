"""``ls-vision project``: paper Fig. 1 (penultimate-layer projections) and the tightness numbers.

    ls-vision project RUN_HARD RUN_LS --classes 0,2,6 --out fig1.png [--max-per-class 300]

For each run (an ``ls-vision`` output directory holding ``checkpoint.pt``, or a checkpoint file;
loaded through the safe loading of :mod:`.checkpointing`) and each of the training split
(evaluation transform: no augmentation) and the validation split: the penultimate activations
of every example of the three classes, and with them (:mod:`ls_plugins.analysis`)

* ``tightness``: ``cluster_tightness`` of the activations (within-class over between-class
  spread; smaller = tighter clusters), over **all** examples of the three classes in the split;
  with ``--bootstrap B`` (default 200, 0 = off) its 95% interval ``tightness_interval`` and the
  ``B`` Poisson-bootstrap replicates ``tightness_bootstrap`` (an example's id: its index in the
  split, the same for every run, so the replicates of two runs pair; ``--bootstrap-seed``);
* ``tightness_in_plane``: the same of the projected points;
* ``wrong_template_distance_cv``: how unequal each example's distances to the wrong classes'
  templates are (0 = equidistant), over the templates of all ``K`` classes and of the three;

written to a JSON file (``--json``, default the PNG's name with ``.json``); and one figure, a
row per run and a column per split, of the projections on the plane through the three classes'
templates (``analysis.template_plane`` / ``project``), drawing at most ``--max-per-class``
examples per class (a seeded choice, the same examples for every run).  Fashion-MNIST's T-shirt,
pullover and shirt (0, 2, 6) are semantically close classes, like the paper's poodles.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ls_plugins import analysis, cli
from ls_plugins.analysis.checks import class_indices
from ls_plugins.analysis.projection import tightness_bootstrap_fields
from ls_plugins.atomic import write_json
from ls_plugins.vision import checkpointing, data, report
from ls_plugins.vision.report import CHECKPOINT, PROG

SPLITS = ("training", "validation")
PLOT_SEED = 0  # which examples are drawn when a class has more than --max-per-class


def class_list(text: str) -> list[int]:
    """Three distinct class indices ``A,B,C`` (their range is checked against the model later)."""
    parts = text.split(",")
    if not all(part.strip().isdigit() for part in parts):
        raise cli.bad_value("--classes", "must be three class indices separated by commas, e.g. "
                                         "0,2,6", repr(text))
    return class_indices("--classes", [int(part) for part in parts], sys.maxsize, exactly=3)


def get_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=f"{PROG} project",
        description="Paper Fig. 1: the penultimate activations of three classes projected on the "
                    "plane of their templates (a row per run, training and validation splits), "
                    "and their cluster tightness and distances to the wrong classes' templates "
                    "(JSON).")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="ls-vision output directories (their checkpoint.pt) or checkpoints; "
                             "one row of panels each, e.g. without and with label smoothing")
    parser.add_argument("--classes", required=True, type=cli.checked("--classes", class_list),
                        metavar="A,B,C", help="three class indices (e.g. 0,2,6 on Fashion-MNIST: "
                                              "T-shirt/top, pullover, shirt)")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--json", help="the numbers (default: --out with .json)")
    parser.add_argument("--max-per-class", type=cli.int_at_least("--max-per-class", 1),
                        default=300, help="examples drawn per class and split (the numbers use "
                                          "all of them)")
    parser.add_argument("--bootstrap", type=cli.int_at_least("--bootstrap", 0), default=200,
                        metavar="B", help="bootstrap replicates of each tightness over the examples, "
                                          "paired between runs (default 200, 0 = no interval)")
    parser.add_argument("--bootstrap-seed", type=cli.int_at_least("--bootstrap-seed", 0), default=0,
                        metavar="S", help="seed of the bootstrap weights (default 0)")
    parser.add_argument("--data-dir", help="where the data set is (default: the first run's)")
    parser.add_argument("--batch-size", type=cli.int_at_least("--batch-size", 1), default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        type=cli.one_of("--device", ("cpu", "cuda")))
    parser.add_argument("--title", help="the figure's title (default: model, data set, classes)")
    return parser


def checkpoint_path(run: str) -> str:
    return os.path.join(run, CHECKPOINT) if os.path.isdir(run) else run


def load_runs(paths: list[str]) -> list[tuple[str, nn.Module, dict]]:
    """``(run, model, checkpoint)`` per run; all on one data set and image shape."""
    loaded = [(run, *checkpointing.load("RUN", checkpoint_path(run))) for run in paths]
    first_run, _, first = loaded[0]
    for run, _, checkpoint in loaded[1:]:
        for key in ("dataset", "num_classes", "in_channels", "image_size"):
            if checkpoint.get(key) != first.get(key):
                raise cli.bad_value("RUN", f"must share {key} with {first_run} "
                                           f"({first.get(key)})", f"{run} ({checkpoint.get(key)})")
    return loaded


def load_splits(checkpoint: dict, data_dir: Optional[str]) -> data.Splits:
    recorded = checkpoint.get("args") or {}
    dataset = checkpoint.get("dataset") or recorded.get("dataset")
    if dataset not in data.DATASETS:
        raise cli.bad_value("RUN", "must be a checkpoint that records its data set", dataset)
    try:
        return data.build_splits(dataset, data_dir or recorded.get("data_dir"),
                                 val_size=recorded.get("val_size"))
    except data.DataUnavailableError as error:
        raise cli.UsageError(str(error)) from None


def three_class_examples(split: Dataset, classes: list[int]) -> tuple[Dataset, Tensor]:
    """The examples of ``split`` whose label is one of ``classes``, in split order, and their
    indices in ``split`` (their bootstrap ids)."""
    labels = data.labels_of(split)
    keep = torch.isin(labels, torch.tensor(classes)).nonzero().flatten()
    return (data.TransformedSubset(split.base, [split.indices[i] for i in keep.tolist()],
                                   split.transform), keep)


@torch.inference_mode()
def penultimate(model: nn.Module, dataset: Dataset, batch_size: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """``(activations N x D, labels N)`` of every example, in order (model in eval mode)."""
    model.to(device).eval()
    activations, labels = [], []
    for images, targets in DataLoader(dataset, batch_size=batch_size):
        activations.append(model.penultimate(images.to(device)).double().cpu())
        labels.append(targets)
    return torch.cat(activations), torch.cat(labels)


def drawn_examples(labels: Tensor, classes: list[int], cap: int) -> Tensor:
    """Indices of at most ``cap`` examples per class (seeded choice), in order."""
    generator = torch.Generator().manual_seed(PLOT_SEED)
    chosen = []
    for c in classes:
        members = (labels == c).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:cap]])
    return torch.cat(chosen).sort().values


def measure(model: nn.Module, activations: Tensor, labels: Tensor, classes: list[int],
            drawn: Tensor, ids: Tensor, args: argparse.Namespace) -> tuple[dict, dict]:
    """``(numbers for the JSON, panel for plots.projection_figure)`` of one run and split;
    ``ids``: each example's bootstrap id (``args.bootstrap`` replicates, 0 = none)."""
    weight, bias = model.last_layer.weight.detach().cpu(), model.last_layer.bias
    bias = None if bias is None else bias.detach().cpu()
    origin, basis = analysis.template_plane(weight, bias, classes)
    points = analysis.project(activations, origin, basis)
    template_points = (analysis.templates(weight, bias)[classes] - origin) @ basis.T
    tightness = analysis.cluster_tightness(activations, labels)
    numbers = {
        "examples": {str(c): int((labels == c).sum()) for c in classes},
        "drawn": len(drawn),
        "tightness": tightness,
        **(tightness_bootstrap_fields(activations, labels, ids, args.bootstrap, args.bootstrap_seed)
           if args.bootstrap else {}),
        "tightness_in_plane": analysis.cluster_tightness(points, labels),
        "wrong_template_distance_cv": {
            "all_classes": analysis.wrong_template_distance_cv(activations, labels, weight, bias),
            "three_classes": analysis.wrong_template_distance_cv(activations, labels, weight, bias,
                                                                 classes)}}
    panel = {"points": points[drawn].numpy(), "labels": labels[drawn].numpy(),
             "tightness": tightness, "templates": template_points.numpy()}
    return numbers, panel


def row_label(run: str, checkpoint: dict, taken: set) -> str:
    recorded = checkpoint.get("args") or {}
    label = report.run_label(recorded) if "label_smoothing" in recorded else os.path.basename(run)
    return f"{label} ({run})" if label in taken else label


def main(argv: Optional[list[str]] = None) -> int:
    """``ls-vision project``; returns the exit code (bad input: one line, exit code 2)."""
    parser = get_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except cli.UsageError as error:
        parser.error(str(error))
    return 0


def run(args: argparse.Namespace) -> None:
    json_path = args.json or os.path.splitext(args.out)[0] + ".json"
    report.check_plot_output(args.out)
    report.check_plot_output(json_path, "--json")
    if os.path.abspath(json_path) == os.path.abspath(args.out):
        raise cli.bad_value("--json", "must differ from --out", json_path)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise cli.bad_value("--device", "cpu (no CUDA device is available)", "cuda")
    runs = load_runs(args.runs)
    first = runs[0][2]
    classes = class_indices("--classes", args.classes, first["num_classes"], exactly=3)
    splits = load_splits(first, args.data_dir)
    datasets = {"training": three_class_examples(data.without_augmentation(splits), classes),
                "validation": three_class_examples(splits.val, classes)}  # (examples, ids)
    split_labels = {split: data.labels_of(dataset) for split, (dataset, _) in datasets.items()}
    device = torch.device(args.device)
    names = list(splits.class_names) or [str(k) for k in range(first["num_classes"])]
    panels, results, taken = {}, [], set()
    for path, model, checkpoint in runs:
        label = row_label(path, checkpoint, taken)
        taken.add(label)
        panels[label], numbers = {}, {}
        for split, (dataset, ids) in datasets.items():
            activations, labels = penultimate(model, dataset, args.batch_size, device)
            if not torch.equal(labels, split_labels[split].to(labels.dtype)):  # pairing: same ids
                raise RuntimeError(f"{path}: the {split} examples came in another order")
            drawn = drawn_examples(labels, classes, args.max_per_class)
            try:
                numbers[split], panels[label][split] = measure(model.cpu(), activations, labels,
                                                               classes, drawn, ids, args)
            except cli.UsageError as error:  # e.g. templates on one line, identical class means
                reason = str(error).partition(": ")[2]
                raise cli.UsageError(f"--classes: {reason} ({path}, {split} split)") from None
        recorded = checkpoint.get("args") or {}
        results.append({"run": path, "label": label,
                        "label_smoothing": recorded.get("label_smoothing"),
                        "teacher": recorded.get("teacher"), "splits": numbers})
    title = args.title or (f"{first['model']} / {first['dataset']}: penultimate activations on "
                           f"the plane of the templates of {', '.join(names[c] for c in classes)}")
    from ls_plugins import plots

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plots.projection_figure(panels, args.out, {c: names[c] for c in classes}, title)
    write_json(json_path, {
        "classes": classes, "class_names": [names[c] for c in classes],
        "dataset": first["dataset"], "model": first["model"],
        "splits": {"training": "training split, evaluation transform (no augmentation)",
                   "validation": "validation split"},
        "numbers_over": "all examples of the three classes in each split",
        "bootstrap_ids": "index of an example in its split, shared by every run",
        "max_drawn_per_class": args.max_per_class, "runs": results})
    for result in results:
        for split in SPLITS:
            numbers = result["splits"][split]
            interval = numbers.get("tightness_interval")
            print(f"{result['label']:40} {split:10} tightness {numbers['tightness']:.4f}"
                  f"{'' if interval is None else ' [{:.4f}, {:.4f}]'.format(*interval)}  "
                  f"equidistance cv (all classes) "
                  f"{numbers['wrong_template_distance_cv']['all_classes']:.4f}")
    print(f"{PROG} project: wrote {args.out} and {json_path}")
