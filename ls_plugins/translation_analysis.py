"""``ls-nmt-analysis``: look inside fairseq translation models (paper sections 2 and 4).

``ls-nmt-analysis project DATA --model hard=H.pt --model ls=L.pt --tokens the,of,and --out fig1.png``
    Fig. 1 for translation: the classes are three target tokens, the activations the decoder's
    final hidden states (teacher-forced, eval mode) at the positions whose reference token is one
    of them, projected on the plane through the three tokens' templates (output-layer rows, bias
    appended).  One row of panels per model, one column per split (``--splits train,valid``, at
    most ``--max-per-token`` positions per token and split, drawn with ``--seed``: the same
    positions for every model).  Writes the PNG and ``fig1.json`` beside it: per model and split
    the cluster tightness and the wrong-template distance CV (:mod:`ls_plugins.analysis`), and
    the counts of positions; with ``--bootstrap B`` (default 200) also each tightness's 95%
    interval and its ``B`` Poisson-bootstrap replicates over the drawn positions (id: a
    position's index in the split's draw, the same for every model: replicates pair between
    models, seeded by ``--bootstrap-seed``).

``ls-nmt-analysis match-gamma DATA --teacher-path H.pt (--gamma 0.1 | --gamma-from-teacher L.pt)``
    Distillation at equal gamma (Fig. 5): the temperature ``T`` at which the teacher's equivalent
    smoothing ``gamma(T)`` on ``--split`` (default train) equals ``--gamma``, or equals the
    ``gamma`` that the teacher ``--gamma-from-teacher`` (e.g. a label-smoothed one) has at T = 1
    on the same split.  Bisection on ``log T`` (:func:`ls_plugins.analysis.bisect_temperature`),
    ``gamma`` streamed over the split (:class:`ls_plugins.decoder_states.SplitGamma`: hidden
    states kept within ``--cache-mb``, the rest recomputed).  Prints ``T`` and writes ``--out``.

``ls-nmt-analysis plot-gamma POINTS.tsv --metric BLEU --out fig5.png``
    Fig. 5: a metric against gamma (:func:`ls_plugins.plots.equal_gamma_figure`) from a table
    with the columns ``curve``, ``gamma``, ``value`` (and optionally ``half_width``); rows whose
    value is ``-`` are left out.

Bad input ends in one line ``ls-nmt-analysis <command>: error: <option>: ...`` (exit code 2)
before anything is written.  Checkpoints are read only by :mod:`ls_plugins.fairseq_models`.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import sys
from typing import Optional, Sequence

from . import atomic, cli

logger = logging.getLogger("ls_plugins.translation_analysis")
PROG = "ls-nmt-analysis"


def build_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=PROG, description="Look inside fairseq translation models: projections of the "
                               "decoder's hidden states (Fig. 1), distillation at equal gamma (Fig. 5).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    project = commands.add_parser(
        "project", help="Fig. 1: hidden states at three target tokens on their templates' plane",
        description="Project the decoder's final hidden states at the positions whose reference "
                    "token is one of three tokens onto the plane of those tokens' templates.")
    project.add_argument("data", help="fairseq data directory (fairseq-preprocess output)")
    project.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                         help="a labelled checkpoint, e.g. hard=hard/checkpoint_best.pt; repeat "
                              "(one row of panels each)")
    project.add_argument("--model-data", action="append", default=[], metavar="LABEL=DIR",
                         help="model LABEL's dictionaries, when the data directory its "
                              "checkpoint records is not found here")
    project.add_argument("--tokens", required=True, metavar="A,B,C",
                         help="three target-dictionary symbols, e.g. the,of,and ('▁the' is "
                              "found from 'the')")
    project.add_argument("--splits", "--subset", default="train,valid", metavar="LIST",
                         help="comma-separated splits, one column of panels each (default "
                              "train,valid)")
    project.add_argument("--max-per-token", type=cli.int_at_least("--max-per-token", 1),
                         default=300, help="positions drawn per token and split (default 300)")
    project.add_argument("--seed", type=cli.int_at_least("--seed", 0), default=1,
                         help="seed of the draw of positions (default 1)")
    project.add_argument("--bootstrap", type=cli.int_at_least("--bootstrap", 0), default=200,
                         metavar="B", help="bootstrap replicates of each tightness over the drawn "
                                           "positions, paired between models (default 200, 0 = "
                                           "no interval)")
    project.add_argument("--bootstrap-seed", type=cli.int_at_least("--bootstrap-seed", 0),
                         default=0, metavar="S", help="seed of the bootstrap weights (default 0)")
    project.add_argument("--cpu", action="store_true", help="use the CPU even if CUDA is available")
    project.add_argument("--out", required=True, metavar="FIG.png",
                         help="the figure; FIG.json beside it gets the numbers")

    match = commands.add_parser(
        "match-gamma", help="Fig. 5: the T at which a teacher's gamma on a split equals a target",
        description="Find the distillation temperature at which the teacher's equivalent label "
                    "smoothing gamma on a split equals a target gamma.")
    match.add_argument("data", help="fairseq data directory (the student's)")
    match.add_argument("--teacher-path", required=True,
                       help="teacher checkpoint, or several separated by ':' (probabilities averaged)")
    target = match.add_mutually_exclusive_group(required=True)
    target.add_argument("--gamma", type=cli.open_unit("--gamma"), help="target gamma in (0, 1)")
    target.add_argument("--gamma-from-teacher", metavar="PATH",
                        help="a checkpoint (e.g. the label-smoothed teacher) whose gamma at T=1 "
                             "on the split is the target")
    match.add_argument("--teacher-data", default=None,
                       help="directory with the dictionaries of --teacher-path and "
                            "--gamma-from-teacher (default: the data directory each checkpoint "
                            "records)")
    match.add_argument("--split", default="train", help="split gamma is measured on (default train)")
    match.add_argument("--tol", type=cli.positive_float("--tol"), default=1e-4,
                       help="|gamma(T) - target| allowed (default 1e-4)")
    match.add_argument("--max-tokens", type=cli.int_at_least("--max-tokens", 1), default=4000,
                       help="tokens per batch, at least the longest example (default 4000)")
    match.add_argument("--batch-size", type=cli.int_at_least("--batch-size", 1), default=None)
    match.add_argument("--cache-mb", type=cli.int_at_least("--cache-mb", 0), default=2048,
                       help="memory for the hidden states kept between evaluations, MiB "
                            "(default 2048; batches beyond it are recomputed, 0 recomputes all)")
    match.add_argument("--cpu", action="store_true", help="use the CPU even if CUDA is available")
    match.add_argument("--out", default=None, metavar="JSON",
                       help="where T, the gamma reached and every evaluation are written")

    plot = commands.add_parser(
        "plot-gamma", help="Fig. 5: a metric against gamma from a table of points",
        description="Plot a metric (BLEU, accuracy) against the equivalent smoothing gamma.")
    plot.add_argument("points", help="TSV with a header: curve, gamma, value[, half_width]")
    plot.add_argument("--metric", default="BLEU", help="the metric's name (default BLEU)")
    plot.add_argument("--out", required=True, metavar="FIG.png", help="the figure")
    return parser


# -- command-line values ------------------------------------------------------------------------

def png_path(option: str, path: str) -> str:
    if not path.lower().endswith(".png"):
        raise cli.bad_value(option, "must name a .png file", path)
    return cli.check_output_file(option, path)


def comma_list(option: str, text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items or len(set(items)) != len(items):
        raise cli.bad_value(option, "must be a comma-separated list of distinct names", repr(text))
    return items


def json_beside(figure: str) -> str:
    return os.path.splitext(figure)[0] + ".json"


def rename_option(error: cli.UsageError, names: dict) -> cli.UsageError:
    """``error`` with its leading argument name replaced by the command's option for it."""
    name, _, rest = str(error).partition(": ")
    return cli.UsageError(f"{names.get(name, name)}: {rest}")


def setup(data: str, first, cpu: bool):
    """(task on DATA from the first checkpoint's configuration, torch device)."""
    import torch

    import ls_plugins
    from .decoder_states import task_on_data

    ls_plugins.register_fairseq()
    return task_on_data(first, data), ("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def read_first(path: str, data: str, option: str, data_dir: Optional[str], data_option: str):
    from fairseq.data import data_utils

    from .fairseq_models import read_checkpoint

    return read_checkpoint(path, option=option, data=data_dir, data_option=data_option,
                           langs=data_utils.infer_language_pair(data))


# -- project ------------------------------------------------------------------------------------

def run_project(args) -> None:
    from .sweep_cli import parse_models

    cli.check_input_dir("data", args.data)
    png_path("--out", args.out)
    cli.check_output_file("--out", json_beside(args.out))
    specs = parse_models(args.model, args.model_data)
    for spec in specs:
        if len(spec.paths) != 1:
            raise cli.bad_value(f"--model {spec.label}", "must be one checkpoint (an ensemble's "
                                "members have no common hidden space)", ":".join(spec.paths))
    symbols = comma_list("--tokens", args.tokens)
    if len(symbols) != 3:
        raise cli.bad_value("--tokens", "must be three distinct symbols (the plane of three "
                                        "templates)", repr(args.tokens))
    splits = comma_list("--splits", args.splits)

    import torch

    from . import analysis, plots
    from .analysis.projection import tightness_bootstrap_fields
    from .decoder_states import (load_split, reference_positions, sample_positions, states_at,
                                 token_indices)
    from .fairseq_models import load_ensemble, output_projection

    first = read_first(specs[0].paths[0], args.data, f"--model {specs[0].label}", specs[0].data,
                       f"--model-data {specs[0].label}=DIR")
    task, device = setup(args.data, first, args.cpu)
    models = {}
    for spec in specs:
        option = f"--model {spec.label}"
        (model,) = load_ensemble(spec.paths, task, option=option, reference=f"DATA ({args.data})",
                                 data=spec.data, data_option=f"--model-data {spec.label}=DIR",
                                 preloaded={first.path: first})
        output_projection(model, option=option, path=spec.paths[0])
        models[spec.label] = model.to(device)
    dictionary = task.target_dictionary
    tokens = token_indices(dictionary, symbols)
    names = {token: dictionary[token] for token in tokens}

    report = {"data": os.path.abspath(args.data), "tokens": [names[t] for t in tokens],
              "token_indices": tokens, "max_per_token": args.max_per_token, "seed": args.seed,
              "bootstrap_ids": "index of a position in its split's draw, shared by every model",
              "splits": {}, "models": {spec.label: {"path": spec.paths[0]} for spec in specs}}
    panels = {label: {} for label in models}
    for split in splits:
        dataset = load_split(task, split, "--splits")
        available = reference_positions(dataset, tokens)
        counts = {names[t]: int((available[:, 2] == t).sum()) for t in tokens}
        absent = [name for name, count in counts.items() if count == 0]
        if absent:
            raise cli.bad_value("--tokens", f"must each occur as a reference token of split "
                                            f"{split!r}", f"{absent[0]!r} (0 positions)")
        chosen = sample_positions(available, tokens, args.max_per_token, args.seed)
        report["splits"][split] = {"available": counts, "used": {
            names[t]: int((chosen[:, 2] == t).sum()) for t in tokens}}
        labels = chosen[:, 2]
        ids = torch.arange(len(chosen))  # bootstrap group of each drawn position, for all models
        for (label, model), states in zip(models.items(),
                                          states_at(list(models.values()), dataset, chosen,
                                                    device=device)):
            if states.size(0) != len(ids):  # the replicates pair only on the same positions
                raise RuntimeError(f"{label}: {states.size(0)} hidden states for {len(ids)} "
                                   f"positions of {split}")
            weight, bias = output_projection(model)
            origin, basis = analysis.template_plane(weight, bias, tokens)
            tightness = analysis.cluster_tightness(states, labels)
            numbers = report["models"][label][split] = {"tightness": tightness}
            if args.bootstrap:
                numbers.update(tightness_bootstrap_fields(states, labels, ids, args.bootstrap,
                                                          args.bootstrap_seed))
            numbers["wrong_template_distance_cv"] = analysis.wrong_template_distance_cv(
                states, labels, weight, bias, classes=tokens)
            panels[label][split] = {
                "points": analysis.project(states, origin, basis).numpy(),
                "labels": labels.numpy(), "tightness": tightness,
                "templates": ((analysis.templates(weight, bias)[tokens] - origin) @ basis.T).numpy()}
    plots.projection_figure(panels, args.out, class_names=names,
                            title="Decoder hidden states on the plane of the templates of "
                                  + ", ".join(names.values()))
    atomic.write_json(json_beside(args.out), report)
    print(f"{'model':<12} {'split':<8} {'positions':>9} {'tightness':>10} {'95% interval':>18} "
          f"{'wrong-template CV':>18}")
    for label in models:
        for split in splits:
            numbers = report["models"][label][split]
            interval = numbers.get("tightness_interval")
            print(f"{label:<12} {split:<8} {sum(report['splits'][split]['used'].values()):>9} "
                  f"{numbers['tightness']:>10.4f} "
                  f"{'-' if interval is None else '[{:.4f}, {:.4f}]'.format(*interval):>18} "
                  f"{numbers['wrong_template_distance_cv']:>18.4f}")
    print(f"figure: {args.out}  numbers: {json_beside(args.out)}")


# -- match-gamma --------------------------------------------------------------------------------

def run_match_gamma(args) -> None:
    cli.check_input_dir("data", args.data)
    if args.out is not None:
        cli.check_output_file("--out", args.out)
    if args.teacher_data is not None:
        cli.check_input_dir("--teacher-data", args.teacher_data)

    from fairseq import utils

    from .analysis import bisect_temperature
    from .decoder_states import SplitGamma, load_split
    from .fairseq_models import epoch_batches, load_ensemble, split_paths

    paths = split_paths(args.teacher_path)
    if not paths:
        raise cli.bad_value("--teacher-path", "must name a checkpoint (or several separated by "
                                              "':')", repr(args.teacher_path))
    first = read_first(paths[0], args.data, "--teacher-path", args.teacher_data,
                       "--teacher-data DIR")
    task, device = setup(args.data, first, args.cpu)

    def load(spec, option):
        models = load_ensemble(spec, task, option=option, reference=f"DATA ({args.data})",
                               data=args.teacher_data, data_option="--teacher-data DIR",
                               preloaded={first.path: first})
        return [model.to(device) for model in models]

    teachers = load(paths, "--teacher-path")
    source = load([args.gamma_from_teacher], "--gamma-from-teacher") \
        if args.gamma_from_teacher else []
    load_split(task, args.split, "--split")
    positions = utils.resolve_max_positions(task.max_positions(),
                                            *[m.max_positions() for m in teachers + source])
    batches = [b for b in epoch_batches(task, args.split, max_tokens=args.max_tokens,
                                        batch_size=args.batch_size, max_positions=positions,
                                        split_option="--split") if "net_input" in b]
    pad = task.target_dictionary.pad()
    report = {"data": os.path.abspath(args.data), "split": args.split,
              "teacher": [os.path.abspath(p) for p in paths], "tol": args.tol}
    gamma_option = "--gamma"
    target = args.gamma
    if source:
        gamma_option = "--gamma-from-teacher"
        target = SplitGamma(source, batches, pad=pad, device=device)(1.0)
        report["gamma_from_teacher"] = {"path": os.path.abspath(args.gamma_from_teacher),
                                        "temperature": 1.0, "gamma": target}
        logger.info(f"{args.gamma_from_teacher}: gamma = {target:.5f} at T=1 on {args.split}")

    gamma = SplitGamma(teachers, batches, pad=pad, device=device,
                       cache_bytes=args.cache_mb * 2 ** 20)
    history = []

    def gamma_at(temperature: float) -> float:
        value = gamma(temperature)
        history.append({"temperature": temperature, "gamma": value})
        logger.info(f"T = {temperature:.6g}: gamma = {value:.6f} (target {target:.6f})")
        return value

    try:
        match = bisect_temperature(gamma_at, target, tol=args.tol)
    except cli.UsageError as err:
        raise rename_option(err, {"gamma": gamma_option, "tol": "--tol",
                                  "gamma_at": "--teacher-path"}) from None
    report.update({"target_gamma": target, "temperature": match.temperature, "gamma": match.gamma,
                   "evaluations": match.evaluations, "history": history,
                   "positions": gamma.positions, "num_classes": len(task.target_dictionary),
                   "cached_batches": gamma.cached_batches, "batches": len(batches)})
    if args.out is not None:
        atomic.write_json(args.out, report)
    print(f"T = {match.temperature:.6g}: gamma = {match.gamma:.6f} on {args.split} "
          f"(target {target:.6f}, {match.evaluations} evaluations over {gamma.positions} positions)")


# -- plot-gamma ---------------------------------------------------------------------------------

def read_points(path: str) -> dict[str, list[tuple]]:
    """``curve -> [(gamma, value[, half_width])]`` from the TSV at ``path``."""
    cli.check_input_file("points", path)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    columns = {"curve", "gamma", "value"}
    if not rows or not columns <= set(rows[0]):
        raise cli.bad_value("points", "must be a TSV with a header holding curve, gamma and "
                                      "value (and optionally half_width) and at least one row", path)
    series: dict[str, list[tuple]] = {}
    for line, row in enumerate(rows, start=2):
        if row["value"].strip() == "-":
            continue
        try:
            point = tuple(float(row[key]) for key in ("gamma", "value", "half_width")
                          if row.get(key) not in (None, ""))
        except ValueError:
            raise cli.bad_value("points", "must hold numbers (or '-') in gamma, value and "
                                          "half_width", f"{path} line {line}: {row}") from None
        if not all(math.isfinite(x) for x in point):
            raise cli.bad_value("points", "must hold finite numbers", f"{path} line {line}")
        series.setdefault(row["curve"], []).append(point)
    if not series:
        raise cli.bad_value("points", "must hold at least one point with a value", path)
    return series


def run_plot_gamma(args) -> None:
    png_path("--out", args.out)
    series = read_points(args.points)
    from . import plots

    plots.equal_gamma_figure(series, args.out, metric_name=args.metric)
    print(f"figure: {args.out} ({sum(len(p) for p in series.values())} points)")


COMMANDS = {"project": run_project, "match-gamma": run_match_gamma, "plot-gamma": run_plot_gamma}


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command != "plot-gamma":
        logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                            level=logging.INFO, stream=sys.stdout)
    with cli.exit_on_usage_error():
        COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
