"""Every figure of the package (matplotlib, Agg backend; the only module that imports matplotlib).

Each function takes plain numbers/dicts (e.g. ``CalibrationStats.to_dict()``) and writes a PNG
atomically (temporary file, then rename).
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import matplotlib

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
    ``CalibrationStats.to_dict()``; the legend shows each curve's ECE.  Curves are drawn in
    order; the first without markers and the rest with markers, as in the paper.
    """
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    markers = [None, "x", "o", "s", "^", "v", "d"]
    for i, (label, stats) in enumerate(curves.items()):
        points = [(b["confidence"], b["accuracy"]) for b in stats["bins"] if b["count"]]
        if not points:
            continue
        xs, ys = zip(*points)
        ece = stats.get("ece")
        name = f"{label} (ECE {ece:.3f})" if ece is not None else label
        ax.plot(xs, ys, marker=markers[i % len(markers)], linewidth=1.5, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def temperature_sweep(results: Sequence[dict], path: str) -> None:
    """Paper Fig. 4: BLEU, ECE and NLL of beam search against the softmax temperature T.

    Left panel: BLEU (blue, left axis) and ECE (red, right axis); right panel: BLEU (blue) and NLL
    (red).  One curve per model and metric; ``results`` rows hold ``model``, ``temperature``,
    ``bleu``, ``ece`` and ``nll``.  Models keep their order of appearance: the first is drawn
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
        ax.set_xlabel("temperature T")
        ax.set_ylabel("BLEU", color="tab:blue")
        ax.tick_params(axis="y", colors="tab:blue")
        twin.set_ylabel(name, color="tab:red")
        twin.tick_params(axis="y", colors="tab:red")
        ax.set_title(f"BLEU and {name.split()[0]}")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color="black", marker=markers[i % len(markers)], label=model)
               for i, model in enumerate(models)]
    fig.legend(handles=handles, loc="upper center", ncol=len(models), fontsize=9,
               bbox_to_anchor=(0.5, 1.06))
    fig.tight_layout()
    save_figure(fig, path)
