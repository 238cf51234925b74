"""Every figure of the package (matplotlib, Agg backend; the only module that imports matplotlib).

Each function takes plain numbers/dicts (e.g. ``CalibrationStats.to_dict()``) and writes a PNG
atomically (temporary file, then rename).
"""
from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .atomic import atomic_write  # noqa: E402

logging.getLogger("matplotlib").setLevel(logging.WARNING)  # fairseq's INFO logging is noisy here


def save_figure(fig, path: str) -> None:
    """Write ``fig`` to ``path`` as PNG atomically (temporary file, then rename), then close it."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def reliability_diagram(curves: Mapping[str, dict], path: str, title: str = "Reliability diagram") -> None:
    """Accuracy against confidence per bin, one line per curve, against the diagonal (paper Fig. 2/3).

    ``curves`` maps a label (e.g. ``"hard targets"``, ``"hard + T=1.9"``, ``"LS 0.05"``) to a
    ``CalibrationStats.to_dict()``.  One panel of :func:`reliability_panels` (see there).
    """
    reliability_panels({"": curves}, path, title)


def _ece_label(label: str, stats: Mapping) -> str:
    """``label: ECE 0.055 [0.049, 0.061]`` (the interval when the statistics hold one)."""
    ece = stats.get("ece")
    if ece is None:
        return label
    text = f"{label}: ECE {ece:.3f}"
    interval = (stats.get("intervals") or {}).get("ece")
    if interval and None not in interval:
        text += " [{:.3f}, {:.3f}]".format(*interval)
    return text


def reliability_panels(panels: Mapping[str, Mapping[str, dict]], path: str,
                       title: str = "Reliability diagram") -> None:
    """Reliability diagrams side by side (e.g. the reference and the hypothesis readings).

    ``panels`` maps a panel title to its curves (label -> ``CalibrationStats.to_dict()``).  In
    each panel: per curve, the bins' accuracy against their mean confidence (the first curve
    without markers, the rest with markers, as in the paper) against the diagonal; a shaded band
    where the bins hold an ``accuracy_interval`` (per bin, e.g. from bootstrap replicates); the
    legend gives each curve's ECE with its interval (``intervals["ece"]``, when present) and the
    number and kind of bins.  Beneath, the share of predictions per confidence bin.
    """
    from matplotlib.patches import Patch

    columns = max(1, len(panels))
    fig, axes = plt.subplots(2, columns, figsize=(4.8 * columns, 5.6), squeeze=False,
                             gridspec_kw={"height_ratios": [3.2, 1]}, sharex="col")
    markers = [None, "x", "o", "s", "^", "v", "d"]
    for column, (panel_title, curves) in enumerate(panels.items()):
        ax, hist = axes[0][column], axes[1][column]
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
        kinds, band_kinds = set(), set()
        for i, (label, stats) in enumerate(curves.items()):
            colour = f"C{i % 10}"
            rows = [b for b in stats["bins"] if b["count"]]
            if not rows:
                continue
            kinds.add(f"{stats.get('n_bins', len(stats['bins']))} "
                      f"{stats.get('bin_kind', 'equal-width')} bins")
            xs = [b["confidence"] for b in rows]
            ax.plot(xs, [b["accuracy"] for b in rows], marker=markers[i % len(markers)] or ".",
                    markersize=4 if i else 3, linewidth=1.5, color=colour,
                    label=_ece_label(label, stats))
            bands = [b.get("accuracy_interval") for b in rows]
            if all(band is not None and None not in band for band in bands):
                lows, highs = [b[0] for b in bands], [b[1] for b in bands]
                ax.fill_between(xs, lows, highs, color=colour, alpha=0.18, linewidth=0)
                ax.vlines(xs, lows, highs, color=colour, alpha=0.5, linewidth=0.8)  # lone bins too
                band_kinds.add(stats.get("bin_interval", "interval per bin"))
            total = sum(b["count"] for b in stats["bins"])
            edges = [stats["bins"][0]["lower"]] + [b["upper"] for b in stats["bins"]]
            hist.stairs([b["count"] / total for b in stats["bins"]], edges, color=colour,
                        fill=len(curves) == 1, alpha=0.45 if len(curves) == 1 else 1.0,
                        linewidth=1.2)
        handles, _ = ax.get_legend_handles_labels()
        level = next((s.get("interval_level") for s in curves.values() if s.get("interval_level")),
                     None)
        for kind in sorted(band_kinds):
            what = f"{100 * level:g}% interval" if level else "interval"
            handles.append(Patch(color="grey", alpha=0.3, label=f"{what} per bin ({kind})"))
        ax.legend(handles=handles, loc="upper left", fontsize=7,
                  title=", ".join(sorted(kinds)) or None, title_fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(panel_title or title, fontsize=10)
        ax.grid(alpha=0.3)
        hist.set_xlim(0, 1)
        hist.set_xlabel("confidence")
        hist.set_ylabel("share of\npredictions", fontsize=8)
        hist.grid(alpha=0.3)
    if len(panels) > 1 or next(iter(panels), "") != "":
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def temperature_sweep(results: Sequence[dict], path: str) -> None:
    """Paper Fig. 4: BLEU, ECE and NLL of beam search against the softmax temperature T.

    Left panel: BLEU (blue, left axis) and ECE (red, right axis: the reference reading solid and,
    where rows hold ``hypothesis_ece``, the hypothesis reading dashed); right panel: BLEU (blue)
    and NLL (red).  One curve per model and metric; ``results`` rows hold ``model``,
    ``temperature``, ``bleu``, ``ece`` and ``nll``.  Models keep their order of appearance: the first is drawn
    without markers, the later ones with markers (the paper: hard targets plain, label smoothing
    with markers).
    """
    from matplotlib.lines import Line2D

    models = list(dict.fromkeys(r["model"] for r in results))
    markers = [None, "o", "s", "^", "d", "v", "x"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (key, name) in zip(axes, [("ece", "ECE"), ("nll", "NLL (nats/token)")]):
        twin = ax.twinx()
        for i, model in enumerate(models):
            rows = sorted((r for r in results if r["model"] == model), key=lambda r: r["temperature"])
            ts = [r["temperature"] for r in rows]
            marker = markers[i % len(markers)]
            ax.plot(ts, [r["bleu"] for r in rows], color="tab:blue", marker=marker, markersize=5)
            twin.plot(ts, [r[key] for r in rows], color="tab:red", marker=marker, markersize=5)
            if key == "ece" and all(r.get("hypothesis_ece") is not None for r in rows):
                twin.plot(ts, [r["hypothesis_ece"] for r in rows], color="tab:red", linestyle="--",
                          marker=marker, markersize=5)
        ax.set_xlabel("temperature T")
        ax.set_ylabel("BLEU", color="tab:blue")
        ax.tick_params(axis="y", colors="tab:blue")
        twin.set_ylabel(name, color="tab:red")
        twin.tick_params(axis="y", colors="tab:red")
        ax.set_title(f"BLEU and {name.split()[0]}")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color="black", marker=markers[i % len(markers)], label=model)
               for i, model in enumerate(models)]
    if all(r.get("hypothesis_ece") is not None for r in results):
        handles += [Line2D([], [], color="tab:red", label="ECE given the reference prefix"),
                    Line2D([], [], color="tab:red", linestyle="--", label="ECE of the generated tokens")]
    fig.legend(handles=handles, loc="upper center", ncol=len(models), fontsize=9,
               bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    save_figure(fig, path)


def projection_figure(panels: Mapping[str, Mapping[str, dict]], path: str,
                      class_names: Mapping[int, str] | Sequence[str],
                      title: str | None = None) -> None:
    """Paper Fig. 1: penultimate activations projected on the plane of three class templates.

    ``panels`` maps a row label (a run, e.g. ``"without LS"``, ``"with LS (α=0.1)"``) to a mapping
    from a column label (``"training"``, ``"validation"``) to a panel: ``points`` (``N x 2``, from
    ``analysis.project``), ``labels`` (``N`` class ids), and optionally ``tightness``
    (``analysis.cluster_tightness``, shown in the title) and ``templates`` (``3 x 2``, the
    templates' own points, drawn as black stars).  ``class_names`` maps a class id to its name
    (a sequence is indexed by the id); each class keeps one colour in every panel.  The panels
    of one row share one square scale (a run's), rows do not (runs differ in scale).
    """
    names = dict(class_names) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    rows = list(panels)
    columns = list(dict.fromkeys(column for row in rows for column in panels[row]))
    present = {int(label) for row in rows for panel in panels[row].values()
               for label in np.asarray(panel["labels"]).reshape(-1)}
    order = [label for label in names if label in present] + sorted(present - set(names))
    colours = {label: f"C{i % 10}" for i, label in enumerate(order)}
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(3.6 * len(columns), 3.6 * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        drawn = [np.asarray(panel[key], dtype=float).reshape(-1, 2)
                 for panel in panels[row].values() for key in ("points", "templates")
                 if panel.get(key) is not None]
        low, high = np.vstack(drawn).min(axis=0), np.vstack(drawn).max(axis=0)
        centre, half = (low + high) / 2, max((high - low).max() / 2 * 1.08, 1e-9)
        for c, column in enumerate(columns):
            ax = axes[r][c]
            panel = panels[row].get(column)
            if panel is None:
                ax.set_axis_off()
                continue
            points = np.asarray(panel["points"], dtype=float).reshape(-1, 2)
            labels = np.asarray(panel["labels"]).reshape(-1)
            size = float(np.clip(4000 / max(len(points), 1), 5, 25))  # few points: bigger dots
            for label, colour in colours.items():
                mine = labels == label
                ax.scatter(points[mine, 0], points[mine, 1], s=size, color=colour, linewidths=0,
                           alpha=0.45 if len(points) > 300 else 0.8, rasterized=True)
            if panel.get("templates") is not None:
                stars = np.asarray(panel["templates"], dtype=float).reshape(-1, 2)
                ax.scatter(stars[:, 0], stars[:, 1], marker="*", s=140, color="black",
                           edgecolors="white", linewidths=0.8, zorder=3)
            heading = f"{row} — {column}"
            if panel.get("tightness") is not None:
                heading += f"\ntightness {panel['tightness']:.3g}"
            ax.set_title(heading, fontsize=9)
            ax.set_xlim(centre[0] - half, centre[0] + half)  # one square scale per row (run)
            ax.set_ylim(centre[1] - half, centre[1] + half)
            ax.set_aspect("equal", adjustable="box")
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.2)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linestyle="", marker="o", color=colour,
                      label=names.get(label, str(label))) for label, colour in colours.items()]
    if any(panel.get("templates") is not None for row in rows for panel in panels[row].values()):
        handles.append(Line2D([], [], linestyle="", marker="*", markersize=11, color="black",
                              label="class templates"))
    fig.tight_layout()
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    if title:
        fig.suptitle(title, y=1.0 + 0.45 / fig.get_figheight(), va="bottom", fontsize=11)
    save_figure(fig, path)


def mutual_information_figure(curves: Mapping[str, Sequence[tuple[float, float]]], path: str,
                              n_examples: int) -> None:
    """Paper Fig. 6: the estimated mutual information between example and logits over training.

    ``curves`` maps a run label (e.g. ``"α=0"``, ``"α=0.1"``) to ``(epoch, estimate)`` points
    (nats, from ``analysis.estimate_mutual_information`` on ``n_examples`` examples).  Dashed
    lines mark ``log 2`` (all examples collapsed into two clusters: only the class is left) and
    ``log N`` (every example told apart), the estimator's range.
    """
    fig, ax = plt.subplots(figsize=(5.6, 3.9))
    markers = ["o", "s", "^", "d", "v", "x"]
    for i, (label, points) in enumerate(curves.items()):
        epochs, estimates = zip(*sorted(points)) if points else ((), ())
        ax.plot(epochs, estimates, marker=markers[i % len(markers)], markersize=4, linewidth=1.5,
                label=label)
    log_n = math.log(n_examples)
    for level, style in [(math.log(2), "--"), (log_n, ":")]:
        ax.axhline(level, color="grey", linestyle=style, linewidth=1)
    levels = ax.secondary_yaxis("right")  # the two levels named beside the axes, clear of data
    levels.set_yticks([math.log(2), log_n],
                      labels=["log 2\n(two clusters)", f"log N\n(N={n_examples})"])
    levels.tick_params(labelsize=8, colors="dimgrey")
    ax.set_ylim(0, log_n * 1.1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("estimated mutual information (nats)")
    ax.set_title("Mutual information between example and logit difference", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(curves), 3), fontsize=8,
              frameon=False)
    fig.tight_layout()
    save_figure(fig, path)


EQUAL_GAMMA_CURVES = {  # key -> (legend label, line style), the paper's Fig. 5 styles
    "teacher": ("teacher with LS (α=γ)", dict(color="tab:blue", linestyle="-", marker="o")),
    "student_ls": ("student, LS α=γ", dict(color="#74b9e8", linestyle="-", marker="o")),
    "student_hard_teacher": ("student distilled from hard teacher at T matching γ",
                             dict(color="tab:red", linestyle="--", marker="s")),
    "student_ls_teacher": ("student distilled from LS teacher (T=1)",
                           dict(color="tab:blue", linestyle="--", marker="^")),
}


def equal_gamma_figure(series: Mapping[str, Sequence[tuple]], path: str,
                       metric_name: str = "accuracy") -> None:
    """Paper Fig. 5: a metric (accuracy, BLEU) against the equivalent smoothing γ.

    ``series`` maps a key of :data:`EQUAL_GAMMA_CURVES` (``teacher``, ``student_ls``,
    ``student_hard_teacher``, ``student_ls_teacher``; other keys are drawn plainly, labelled by
    the key) to points ``(γ, value)`` or ``(γ, value, half_width)`` (an error bar, e.g. over
    seeds).
    """
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for key, points in series.items():
        if not points:
            continue
        label, style = EQUAL_GAMMA_CURVES.get(key, (key, dict(marker="o")))
        points = sorted(tuple(p) for p in points)
        gammas, values = [p[0] for p in points], [p[1] for p in points]
        errors = [p[2] for p in points] if all(len(p) > 2 for p in points) else None
        ax.errorbar(gammas, values, yerr=errors, label=label, linewidth=1.6, markersize=4.5,
                    capsize=2.5, **style)
    ax.set_xlabel("equivalent label smoothing γ")
    ax.set_ylabel(metric_name)
    ax.set_title(f"Distillation at equal γ: {metric_name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
