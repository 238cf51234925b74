"""What ``ls-vision`` reports: metrics records, the epoch line, the summary, the reliability
diagram of a run, and ``ls-vision plot`` (paper Fig. 2 from several runs).

The figures themselves are drawn by :mod:`ls_plugins.plots` (the only matplotlib user), imported
when a figure is drawn: a refused command line does not wait for matplotlib.
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional

from ls_plugins import calibration, cli
from ls_plugins.atomic import write_json

PROG = "ls-vision"
METRICS = "metrics.json"
RELIABILITY = "reliability.png"
CHECKPOINT = "checkpoint.pt"
TIMING_KEYS = ("epoch_seconds", "train_images_per_second", "eval_seconds", "mi_seconds")


def flat_metrics(result: dict) -> dict:
    """The scalar metrics of an evaluation (``val``, ``test``, ``test_scaled`` statistics and the
    fitted ``temperature``), for the history and the summary."""
    val, test, scaled = result["val"], result["test"], result["test_scaled"]
    return {"val_accuracy": val.accuracy(), "val_nll": val.nll(), "val_ece": val.ece(),
            "temperature": result["temperature"],
            "test_accuracy": test.accuracy(), "test_nll": test.nll(), "test_ece": test.ece(),
            "test_mce": test.mce(), "test_confidence": test.confidence(),
            "test_overconfidence": test.confidence() - test.accuracy(),
            "test_ece_scaled": scaled.ece(), "test_nll_scaled": scaled.nll(),
            "test_mce_scaled": scaled.mce()}


def final_metrics(result: dict, history: list) -> dict:
    """The ``final`` record of ``metrics.json``: the scalars, the last teacher gamma and every
    split's statistics (with their bins)."""
    final = flat_metrics(result)
    final["teacher_gamma"] = history[-1].get("teacher_gamma") if history else None
    final.update({name: result[name].to_dict() for name in ("val", "test", "test_scaled")})
    return final


def run_label(run_args: dict) -> str:
    """``α=<a>``, plus the teacher's temperature (and matched gamma) and weight when distilled."""
    label = f"α={run_args['label_smoothing']:g}"
    if run_args.get("teacher"):
        matched = run_args.get("match_gamma")
        temperature = f"T={run_args['distill_temperature']:.3g}"
        label += (f", distilled at γ={matched:g} ({temperature})" if matched is not None
                  else f", distilled {temperature}") + f" β={run_args['distill_weight']:g}"
    return label


def draw_reliability(final: dict, run_args: dict, path: str, title: str) -> None:
    """The run's test reliability diagram at T = 1 and at the fitted T (paper Fig. 2 style)."""
    from ls_plugins import plots

    label = run_label(run_args)
    plots.reliability_diagram({label: final["test"],
                               f"{label}, T={final['temperature']:.2f}": final["test_scaled"]},
                              path, title)


def epoch_line(record: dict, epochs: int, distilling: bool) -> str:
    """One log line per epoch."""
    line = (f"epoch {record['epoch']}/{epochs} | lr {record['lr']:.4g} | train loss "
            f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | test acc "
            f"{record['test_accuracy']:.4f} nll {record['test_nll']:.4f} ece {record['test_ece']:.4f} "
            f"| T* {record['temperature']:.3f} ece(T*) {record['test_ece_scaled']:.4f}")
    if distilling:
        line += f" | teacher gamma {record['teacher_gamma']:.4f}"
    return line + f" | {record['train_images_per_second']:.0f} img/s"


def with_interval(value: float, interval: list) -> str:
    """``0.0552 [0.0490, 0.0611]`` (``nan`` for a missing bound)."""
    low, high = (float("nan") if x is None else x for x in interval)
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def ece_interval_lines(final: dict) -> list[str]:
    """The test ECE at T = 1 and at T* with their bootstrap intervals, and the paired interval
    of their difference (both scored the same images with the same weights); none without
    ``--calibration-bootstrap``."""
    test, scaled = final["test"], final["test_scaled"]
    if "intervals" not in test:
        return []
    difference = calibration.paired_replicate_interval(test, scaled, "ece", test["interval_level"])
    return [f"test ECE, {test['interval_level']:.0%} intervals (bootstrap over the {test['count']} "
            f"images, {test['bootstrap']} replicates, seed {test['seed']}):",
            f"  T=1 {with_interval(test['ece'], test['intervals']['ece'])} | "
            f"T*={final['temperature']:.3f} {with_interval(scaled['ece'], scaled['intervals']['ece'])} | "
            f"T=1 minus T* (paired) {with_interval(test['ece'] - scaled['ece'], difference)}"]


def summary(metrics: dict, output_dir: str, seconds: float) -> str:
    """One screen: the final test metrics at T = 1 and at T*, and where the outputs are."""
    final, run_args = metrics["final"], metrics["args"]
    done = (f"evaluated {run_args['resume']}" if run_args["test_only"]
            else f"{metrics['epochs_trained']} epochs")
    lines = [f"{PROG} | {metrics['model']} on {metrics['dataset']} | {run_label(run_args)} | "
             f"{done} | {metrics['world_size']} process(es) | {seconds / 60:.1f} min",
             f"{'':22}{'accuracy':>10}{'NLL':>9}{'ECE':>9}{'MCE':>9}{'conf':>9}"]
    for name, key in (("test, T=1", "test"), (f"test, T*={final['temperature']:.3f}", "test_scaled")):
        stats = final[key]
        lines.append(f"{name:22}{stats['accuracy']:10.4f}{stats['nll']:9.4f}{stats['ece']:9.4f}"
                     f"{stats['mce']:9.4f}{stats['confidence']:9.4f}")
    lines.extend(ece_interval_lines(final))
    lines.append(f"validation: accuracy {final['val_accuracy']:.4f}, NLL {final['val_nll']:.4f}; "
                 f"T* fitted on {final['val']['count']} validation images")
    if final.get("teacher_gamma") is not None:
        lines.append(f"teacher: equivalent smoothing gamma {final['teacher_gamma']:.4f} "
                     f"at T={run_args['distill_temperature']:g} (augmented training images)")
    distillation = metrics.get("distillation")
    if distillation is not None:
        target = distillation["target_gamma"]
        lines.append(f"teacher: gamma {distillation['gamma']:.4f} at T={distillation['temperature']:.4f} "
                     f"over the {distillation['images']} training images without augmentation"
                     + (f" (--match-gamma {target:g})" if target is not None else ""))
    probed = [record for record in metrics["history"] if "mutual_information" in record]
    if probed:
        lines.append(f"mutual information of classes {run_args['mi_classes'][0]} and "
                     f"{run_args['mi_classes'][1]} ({run_args['mi_examples']} examples x "
                     f"{run_args['mi_augmentations']} augmentations): "
                     f"{probed[-1]['mutual_information']:.3f} nats after epoch {probed[-1]['epoch']}"
                     f" (log 2 = 0.693, log N = {math.log(run_args['mi_examples']):.3f})")
    lines.append(f"outputs: {os.path.join(output_dir, METRICS)}, "
                 f"{os.path.join(output_dir, RELIABILITY)}"
                 + ("" if run_args["test_only"] else f", {os.path.join(output_dir, CHECKPOINT)}"))
    return "\n".join(lines)


def write_final_outputs(metrics: dict, result: dict, output_dir: str, title: str,
                        seconds: float) -> None:
    """``metrics.json`` with the final metrics, ``reliability.png``, and the summary on stdout."""
    metrics["final"] = final_metrics(result, metrics["history"])
    metrics["epochs_trained"] = len(metrics["history"])
    write_json(os.path.join(output_dir, METRICS), metrics)
    draw_reliability(metrics["final"], metrics["args"], os.path.join(output_dir, RELIABILITY), title)
    print(summary(metrics, output_dir, seconds), flush=True)


# -- `ls-vision plot` ------------------------------------------------------------------------------
def get_plot_parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=f"{PROG} plot", description=plot_main.__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output directories of ls-vision")
    parser.add_argument("--out", required=True,
                        help="the PNG to write (its directory is created if needed)")
    parser.add_argument("--title", default="Reliability diagram")
    return parser


def read_run_metrics(run: str, *, finished: bool = True) -> dict:
    """The ``metrics.json`` of a run (a finished one unless ``finished=False``), with its
    ``args`` and ``history``; :class:`cli.UsageError` naming RUN_DIR otherwise."""
    finished_run = "a finished run's" if finished else "a run's"
    allowed = f"must be an ls-vision output directory holding {finished_run} {METRICS}"
    try:
        with open(os.path.join(run, METRICS), encoding="utf-8") as handle:
            metrics = json.load(handle)
    except (OSError, ValueError) as error:
        raise cli.bad_value("RUN_DIR", allowed, f"{run} ({cli.first_line(error)})") from None
    if not isinstance(metrics, dict):
        raise cli.bad_value("RUN_DIR", allowed, f"{run} (not a JSON object)")
    if finished and metrics.get("final") is None:
        raise cli.bad_value("RUN_DIR", allowed, f"{run} (no final metrics: the run has not finished)")
    final, run_args = metrics.get("final"), metrics.get("args")
    missing = [f"final.{key}" for key in ("test", "test_scaled", "temperature")
               if finished and (not isinstance(final, dict) or key not in final)]
    if not isinstance(run_args, dict) or "label_smoothing" not in run_args:
        missing.append("args.label_smoothing")
    if not isinstance(metrics.get("history"), list):
        missing.append("history")
    if missing:
        raise cli.bad_value("RUN_DIR", allowed, f"{run} (no {', '.join(missing)} in {METRICS})")
    return metrics


def check_plot_output(path: str, option: str = "--out") -> None:
    """``path`` can be written as a file, creating its directory if needed."""
    if os.path.isdir(path):
        raise cli.bad_value(option, "must name a file", f"{path} (a directory)")
    try:
        cli.check_output_dir(option, os.path.dirname(os.path.abspath(path)))
    except cli.UsageError:
        raise cli.bad_value(option, "must name a file in a directory that can be written or "
                                    "created", path) from None


def plot_main(argv: Optional[list[str]] = None) -> int:
    """Paper Fig. 2 from finished runs: each run's test curve at T = 1; runs trained with hard
    targets (alpha = 0, no teacher) also after temperature scaling at their fitted T."""
    parser = get_plot_parser()
    args = parser.parse_args(argv)
    try:
        check_plot_output(args.out)
        runs = [(run, read_run_metrics(run)) for run in args.runs]
    except cli.UsageError as error:
        parser.error(str(error))
    curves = {}
    for run, metrics in runs:
        final = metrics["final"]
        hard_targets = metrics["args"]["label_smoothing"] == 0 and not metrics["args"].get("teacher")
        label = "hard targets" if hard_targets else run_label(metrics["args"])
        if label in curves:
            label = f"{label} ({run})"
        curves[label] = final["test"]
        if hard_targets:
            curves[f"{label}, T={final['temperature']:.2f}"] = final["test_scaled"]
    from ls_plugins import plots

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plots.reliability_diagram(curves, args.out, args.title)
    print(f"{PROG} plot: wrote {args.out}")
    return 0
