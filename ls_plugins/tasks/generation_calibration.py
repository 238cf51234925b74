"""What the generation hook measures on one subset, and the lines and JSON it reports.

Two readings of token-level calibration (DESIGN.md, Conventions), each always labelled:

- **reference** (paper section 3): the next-token predictions given the reference prefix
  (teacher forcing), at every non-pad target position, EOS included, at the generation
  temperature;
- **hypothesis** (inference calibration, Wang et al. ACL 2020): every token of the top
  hypothesis (``hypos[i][0]``, EOS included) with its generation probability ``exp`` of
  fairseq's positional score (a log-probability at the generation temperature; an ensemble's
  averaged probability), correct when
  :func:`~ls_plugins.calibration.hypothesis_correctness` aligns it to an identical reference
  token.  Only that one probability is known, so its NLL and Brier score are those of the
  binary forecast "correct" (:meth:`~ls_plugins.calibration.CalibrationStats.update_confidences`).

Intervals: a Poisson bootstrap over sentences (group id = ``sample["id"]``), ``bootstrap``
replicates drawn with ``seed``; the two readings share the seed and the groups, so their
replicates are paired.  The optional temperature fit streams
(:class:`~ls_plugins.calibration.TemperatureFit`): memory independent of the number of tokens.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from fairseq import utils

from .. import cli
from ..calibration import CalibrationStats, TemperatureFit, hypothesis_correctness
from ..teacher_forcing import teacher_forced_scores

MODES = ("reference", "hypothesis", "both")
ESTIMATORS = ("debiased", "marginal", "adaptive")
READING_TITLES = {"reference": "reference (teacher-forced)", "hypothesis": "hypothesis (generated)"}


def parse_estimators(text: Optional[str], option: str = "--calibration-estimators") -> tuple[str, ...]:
    """``"debiased,adaptive"`` -> ``("debiased", "adaptive")`` (empty or None: none)."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    for name in names:
        if name not in ESTIMATORS:
            raise cli.bad_value(option, f"must be a comma-separated list of {', '.join(ESTIMATORS)}",
                                repr(name))
    return tuple(dict.fromkeys(names))


def check_mode(mode: str, option: str = "--calibration-mode") -> str:
    if mode not in MODES:
        raise cli.bad_value(option, f"must be one of {', '.join(MODES)}", repr(mode))
    return mode


def hypothesis_predictions(hypotheses: Sequence[dict], targets: torch.Tensor, ids: torch.Tensor,
                           pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(confidence, correct, sentence id)`` of every token of each hypothesis.

    ``hypotheses[i]``: fairseq's best hypothesis of sentence ``ids[i]`` (``tokens`` and
    ``positional_scores``, EOS included); ``targets[i]``: its reference row (padding stripped
    here).
    """
    confidence, correct, groups = [], [], []
    for hypothesis, target, sentence in zip(hypotheses, targets, ids.tolist()):
        tokens = hypothesis["tokens"]
        reference = utils.strip_pad(target, pad)
        confidence.append(hypothesis["positional_scores"].detach().double().cpu().exp())
        correct.append(hypothesis_correctness(tokens, reference))
        groups.append(torch.full((tokens.numel(),), sentence, dtype=torch.int64))
    if not confidence:
        empty = torch.zeros(0)
        return empty.double(), empty.bool(), empty.long()
    # a negative --unkpen can lift an unknown word's score above 0
    return torch.cat(confidence).clamp_(max=1.0), torch.cat(correct), torch.cat(groups)


class GenerationCalibration:
    """The statistics of one generation run: the readings ``mode`` asks for, the sentences
    scored, and (``fit_temperature``) the streamed NLL-optimal temperature of the reference."""

    def __init__(self, n_bins: int, *, mode: str = "both", bootstrap: int = 0, seed: int = 0,
                 level: float = 0.95, estimators: Sequence[str] = (), fit_temperature: bool = False):
        self.mode = check_mode(mode)
        self.estimators = tuple(estimators)
        self.level = cli.check_open_unit("--calibration-level", level)
        adaptive = "adaptive" in self.estimators

        def stats(marginal: bool) -> CalibrationStats:
            return CalibrationStats(n_bins, bootstrap=bootstrap, seed=seed, adaptive=adaptive,
                                    marginal=marginal)
        self.reference = stats("marginal" in self.estimators) if mode != "hypothesis" else None
        self.hypothesis = stats(False) if mode != "reference" else None
        self.fit = TemperatureFit() if fit_temperature else None
        self.fit_scale = 1.0  # the fit's T times this: the temperature of the model's logits
        self.sentences: set[int] = set()

    @property
    def teacher_forced(self) -> bool:
        """Whether a teacher-forced pass is needed (the reference reading or the fit)."""
        return self.reference is not None or self.fit is not None

    def add_reference(self, models, sample: dict, temperature: float, pad: int,
                      encoder_outs=None) -> None:
        """Add the batch's teacher-forced predictions at ``temperature`` (and feed the fit)."""
        scores, score_temperature = teacher_forced_scores(models, sample, temperature, encoder_outs)
        target = sample["target"]
        if self.reference is not None:
            groups = sample["id"].view(-1, 1).expand_as(target)
            self.reference.update(scores, target, temperature=score_temperature, ignore_index=pad,
                                  groups=groups)
        if self.fit is not None:
            self.fit.update(scores, target, ignore_index=pad)
            self.fit_scale = temperature / score_temperature

    def add_hypotheses(self, hypotheses: Sequence[dict], sample: dict, pad: int) -> None:
        """Add every token of the batch's best hypotheses (``hypotheses[i]``: sentence ``i``'s)."""
        if self.hypothesis is not None:
            confidence, correct, groups = hypothesis_predictions(hypotheses, sample["target"],
                                                                 sample["id"], pad)
            self.hypothesis.update_confidences(confidence, correct, groups=groups)

    def add_batch(self, models, sample: dict, hypos: Sequence[Sequence[dict]], temperature: float,
                  pad: int, encoder_outs=None) -> None:
        """Score one batch of fairseq-generate: ``hypos[i]`` the n-best list of sentence ``i``."""
        if self.teacher_forced:
            self.add_reference(models, sample, temperature, pad, encoder_outs)
        self.add_hypotheses([nbest[0] for nbest in hypos], sample, pad)
        self.sentences.update(sample["id"].tolist())

    def fitted_temperature(self) -> Optional[float]:
        if self.fit is None or self.fit.count == 0:
            return None
        return self.fit.fit() * self.fit_scale

    def readings(self) -> dict[str, CalibrationStats]:
        return {name: stats for name, stats in (("reference", self.reference),
                                                ("hypothesis", self.hypothesis)) if stats is not None}

    # -- reports ------------------------------------------------------------------------------
    def reading_dict(self, stats: CalibrationStats) -> dict:
        """``stats.to_dict`` with each bin's accuracy interval and the kind of bins."""
        result = stats.to_dict(self.level)
        for row, interval in zip(result["bins"], stats.bin_accuracy_intervals(self.level)):
            row["accuracy_interval"] = None if interval is None else [finite(x) for x in interval]
        result["bin_kind"] = "equal-width"
        result["bin_interval"] = ("bootstrap over sentences" if stats.bootstrap
                                  else "Wilson score (tokens independent)")
        return result

    def to_dict(self, temperature: float, subset: Optional[str], total: Optional[int]) -> dict:
        """The JSON: the reference reading's statistics at the top level (as before hypothesis
        calibration existed), the hypothesis reading's under ``"hypothesis"``."""
        result = {"temperature": temperature, "subset": subset, "mode": self.mode,
                  "estimators": list(self.estimators),
                  "sentences": {"scored": len(self.sentences), "total": total}}
        if self.reference is not None:
            result.update(reading="reference", **self.reading_dict(self.reference))
        fitted = self.fitted_temperature()
        if fitted is not None:
            result["fitted_temperature"] = fitted
        if self.hypothesis is not None:
            result["hypothesis"] = {"reading": "hypothesis",
                                    "nll_and_brier": "of the binary forecast: correct with "
                                                     "probability = confidence",
                                    **self.reading_dict(self.hypothesis)}
        return result

    def lines(self, temperature: float, total: Optional[int]) -> list[str]:
        """One line per reading: ``Calibration (reference) | T 1.00 | bins 15 equal-width |
        sentences 500/500 | tokens N | ECE 0.0552 [0.0490, 0.0611] | ...``."""
        sentences = f"{len(self.sentences)}/{'?' if total is None else total}"
        lines = []
        for reading, stats in self.readings().items():
            line = calibration_line(reading, stats, temperature, sentences, self.estimators,
                                    self.level)
            fitted = self.fitted_temperature()
            if reading == "reference" and fitted is not None:
                line += f" | NLL-optimal T {fitted:.3f}"
            lines.append(line)
        if self.reference is None and self.fitted_temperature() is not None:  # hypothesis mode
            lines.append(f"Calibration (reference) | NLL-optimal T {self.fitted_temperature():.3f}")
        return lines


def finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


def calibration_line(reading: str, stats: CalibrationStats, temperature: float, sentences: str,
                     estimators: Sequence[str] = (), level: float = 0.95) -> str:
    """One reading's log line; with bootstrap replicates, ``[low, high]`` intervals at ``level``
    after the ECE (and the debiased CE^2)."""
    def with_interval(metric: str, value: float) -> str:
        text = f"{value:.4f}"
        if stats.bootstrap:
            text += " [{:.4f}, {:.4f}]".format(*stats.interval(metric, level))
        return text
    binary = " (binary)" if reading == "hypothesis" else ""
    fields = [f"Calibration ({reading})", f"T {temperature:.2f}", f"bins {stats.n_bins} equal-width",
              f"sentences {sentences}", f"tokens {stats.count()}",
              f"ECE {with_interval('ece', stats.ece())}", f"MCE {stats.mce():.4f}",
              f"NLL{binary} {stats.nll():.4f}", f"Brier{binary} {stats.brier():.4f}",
              f"acc {stats.accuracy():.4f}", f"conf {stats.confidence():.4f}"]
    if "debiased" in estimators:
        fields.append(f"debiased CE^2 {with_interval('debiased_ce2', stats.debiased_ce2())}")
    if "marginal" in estimators and stats.marginal:
        fields.append(f"marginal ECE {stats.marginal_ece():.4f}")
    if "adaptive" in estimators:
        fields.append(f"adaptive ECE {stats.adaptive_ece():.4f} ({stats.n_bins} equal-mass bins)")
    if stats.bootstrap:
        fields.append(f"{100 * level:g}% intervals: {stats.bootstrap} bootstrap replicates over sentences")
    return " | ".join(fields)
