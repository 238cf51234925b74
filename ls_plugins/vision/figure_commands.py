"""``ls-vision plot-mi`` (paper Fig. 6) and ``ls-vision plot-fig5`` (paper Fig. 5) from runs'
``metrics.json``.

    ls-vision plot-mi RUN_DIR... --out fig6.png
    ls-vision plot-fig5 RUN_DIR... --out fig5.png [--metric test_accuracy]

``plot-mi`` draws each run's mutual information estimates (``--mi-every``: before training and
after the probed epochs) against the epoch, with ``log 2`` and ``log N`` marked; the runs must
have probed the same number ``N`` of examples.  Unfinished runs are drawn up to their last epoch.

``plot-fig5`` draws a final metric (test accuracy by default) of finished runs against the
equivalent label smoothing ``gamma``, one point per run, on the paper's four curves.  Each run
is classified from its ``metrics.json``:

* distilled (``--teacher``): from a hard-target teacher (the teacher's ``label_smoothing`` is 0)
  -> ``student_hard_teacher``, else ``student_ls_teacher``; ``gamma`` is the teacher's gamma at
  the run's temperature over the training split without augmentation (its ``distillation``
  record: the ``--match-gamma`` target to 1e-3, or the value at ``--distill-temperature``);
* not distilled: ``teacher`` if its ``checkpoint.pt`` is the teacher of a distilled run given,
  or if it has the model and architecture of such a teacher and not those of the distilled
  students; otherwise ``student_ls`` (a student trained alone).  ``gamma`` is its ``alpha``.

The points are also written to a JSON file beside the PNG (``--json``) and printed as a table.
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional

from ls_plugins import cli
from ls_plugins.atomic import write_json
from ls_plugins.vision import models, report
from ls_plugins.vision.report import CHECKPOINT, PROG

FIG5_METRICS = ("test_accuracy", "val_accuracy", "test_nll", "test_ece", "test_ece_scaled")


def figure_parser(name: str, description: str) -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=f"{PROG} {name}", description=description)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output directories of ls-vision")
    parser.add_argument("--out", required=True,
                        help="the PNG to write (its directory is created if needed)")
    return parser


def unique_label(label: str, run: str, taken: set) -> str:
    label = f"{label} ({run})" if label in taken else label
    taken.add(label)
    return label


# -- plot-mi ---------------------------------------------------------------------------------------
def mutual_information_points(run: str, metrics: dict) -> list[tuple[int, float]]:
    """``(epoch, estimate)`` of a run trained with ``--mi-every`` (epoch 0: before training)."""
    if metrics["args"].get("mi_every") is None:
        raise cli.bad_value("RUN_DIR", "must be a run trained with --mi-every",
                            f"{run} (no mutual information in its {report.METRICS})")
    initial = metrics.get("mutual_information_initial")
    points = [(0, initial["mutual_information"])] if initial else []
    points += [(record["epoch"], record["mutual_information"]) for record in metrics["history"]
               if "mutual_information" in record]
    if not points:
        raise cli.bad_value("RUN_DIR", "must hold at least one mutual information estimate",
                            f"{run} (none yet)")
    return points


def plot_mi_main(argv: Optional[list[str]] = None) -> int:
    """Paper Fig. 6: the estimated mutual information between training examples and their logit
    difference over training, one curve per run (runs trained with --mi-every)."""
    parser = figure_parser("plot-mi", plot_mi_main.__doc__)
    args = parser.parse_args(argv)
    curves, taken = {}, set()
    try:
        report.check_plot_output(args.out)
        runs = [(run, report.read_run_metrics(run, finished=False)) for run in args.runs]
        first_run, first = runs[0]
        for run, metrics in runs:
            points = mutual_information_points(run, metrics)
            if metrics["args"]["mi_examples"] != first["args"]["mi_examples"]:
                raise cli.bad_value("RUN_DIR", f"must probe as many examples as {first_run} "
                                               f"(N={first['args']['mi_examples']})",
                                    f"{run} (N={metrics['args']['mi_examples']})")
            curves[unique_label(report.run_label(metrics["args"]), run, taken)] = points
    except cli.UsageError as error:
        parser.error(str(error))
    from ls_plugins import plots

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    num_examples = first["args"]["mi_examples"]
    plots.mutual_information_figure(curves, args.out, num_examples)
    for label, points in curves.items():
        print(f"{label:40} " + "  ".join(f"epoch {epoch}: {value:.3f}" for epoch, value in points))
    print(f"log 2 = {math.log(2):.3f}, log N = {math.log(num_examples):.3f} (N = {num_examples})")
    print(f"{PROG} plot-mi: wrote {args.out}")
    return 0


# -- plot-fig5 -------------------------------------------------------------------------------------
def shape(model: str, architecture: dict) -> tuple[str, str]:
    """A model name and its architecture options, comparable between runs."""
    return model, json.dumps(architecture or {}, sort_keys=True)


def same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.abspath(a) == os.path.abspath(b)


def fig5_point(run: str, metrics: dict, teachers: list[tuple[str, tuple]],
               student_shapes: set, metric: str) -> dict:
    """The curve, gamma and value of one run (see the module docstring)."""
    run_args = metrics["args"]
    point = {"run": run, "alpha": run_args["label_smoothing"], "value": metrics["final"][metric]}
    if run_args.get("teacher"):
        record = metrics.get("distillation")
        if not isinstance(record, dict) or record.get("teacher_label_smoothing") is None:
            raise cli.bad_value("RUN_DIR", "must be a distilled run whose metrics.json records the "
                                           "teacher's gamma and label smoothing (its distillation "
                                           "record)", run)
        teacher_alpha = record["teacher_label_smoothing"]
        curve = "student_hard_teacher" if teacher_alpha == 0 else "student_ls_teacher"
        return dict(point, curve=curve, gamma=record["gamma"], temperature=record["temperature"],
                    target_gamma=record["target_gamma"], teacher_alpha=teacher_alpha,
                    teacher=run_args["teacher"])
    own = shape(metrics["model"], models.architecture(metrics["model"], run_args))
    checkpoint = os.path.join(run, CHECKPOINT)
    is_teacher = (any(same_file(checkpoint, path) for path, _ in teachers)
                  or (own in {s for _, s in teachers} and own not in student_shapes))
    return dict(point, curve="teacher" if is_teacher else "student_ls", gamma=point["alpha"])


def plot_fig5_main(argv: Optional[list[str]] = None) -> int:
    """Paper Fig. 5: a final metric of teachers, students trained alone and distilled students
    against the equivalent label smoothing gamma (see the module docstring)."""
    parser = figure_parser("plot-fig5", plot_fig5_main.__doc__)
    parser.add_argument("--metric", default="test_accuracy", type=cli.one_of("--metric", FIG5_METRICS),
                        help="the final metric drawn")
    parser.add_argument("--json", help="the points (default: --out with .json)")
    args = parser.parse_args(argv)
    json_path = args.json or os.path.splitext(args.out)[0] + ".json"
    try:
        report.check_plot_output(args.out)
        report.check_plot_output(json_path, "--json")
        if os.path.abspath(json_path) == os.path.abspath(args.out):
            raise cli.bad_value("--json", "must differ from --out", json_path)
        runs = [(run, report.read_run_metrics(run)) for run in args.runs]
        distilled = [m for _, m in runs if m["args"].get("teacher")]
        teachers = [(m["args"]["teacher"], shape(m["distillation"]["teacher_model"],
                                                 m["distillation"]["teacher_architecture"]))
                    for m in distilled if isinstance(m.get("distillation"), dict)]
        students = {shape(m["model"], models.architecture(m["model"], m["args"])) for m in distilled}
        points = [fig5_point(run, metrics, teachers, students, args.metric) for run, metrics in runs]
    except cli.UsageError as error:
        parser.error(str(error))
    series: dict[str, list] = {}
    for point in points:
        series.setdefault(point["curve"], []).append((point["gamma"], point["value"]))
    from ls_plugins import plots

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plots.equal_gamma_figure(series, args.out, metric_name=args.metric.replace("_", " "))
    write_json(json_path, {"metric": args.metric, "points": points})
    print(f"{'curve':22}{'gamma':>8}{'alpha':>7}{'teacher alpha':>15}{'T':>8}{args.metric:>15}  run")
    for point in sorted(points, key=lambda p: (p["curve"], p["gamma"])):
        distilled = "temperature" in point
        teacher_alpha = f"{point['teacher_alpha']:g}" if distilled else "-"
        temperature = f"{point['temperature']:.3f}" if distilled else "-"
        print(f"{point['curve']:22}{point['gamma']:8.4f}{point['alpha']:7g}{teacher_alpha:>15}"
              f"{temperature:>8}{point['value']:15.4f}  {point['run']}")
    print(f"{PROG} plot-fig5: wrote {args.out} and {json_path}")
    return 0
