"""``--task translation_calibration``: fairseq-generate with token-level calibration scoring.

Paper section 3 (Table 3, Fig. 3).  For every batch, after beam search (or sampling) has produced
its hypotheses, the task runs the model(s) once more *teacher-forced* on the reference and adds
the next-token predictions at every non-pad target position (EOS included), at the generation
temperature ``--temperature`` (logits / T; ensembles average probabilities as fairseq does), to
a :class:`~ls_plugins.calibration.CalibrationStats`.  The hypotheses are untouched.

``--scoring calibration`` reports the statistics at the end next to sacreBLEU (see
:mod:`ls_plugins.scoring.calibration`); the task writes the JSON and the reliability diagram.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .. import cli
from ..atomic import write_json
from ..calibration import DEFAULT_BINS, CalibrationStats, check_bins, fit_temperature
from ..teacher_forcing import decoder_logits, decoder_log_probs

# The task instance of this process whose statistics the ``calibration`` scorer reports: fairseq
# builds the scorer from its own config only, so the two meet here.
ACTIVE_TASK = None


@dataclass
class TranslationCalibrationConfig(TranslationConfig):
    calibration_bins: int = field(
        default=DEFAULT_BINS, metadata={"help": "number of equal-width confidence bins (>= 1)"})
    calibration_adaptive: bool = field(
        default=False, metadata={"help": "also report the equal-mass (adaptive) ECE; keeps one "
                                         "confidence per target token in memory"})
    calibration_json: Optional[str] = field(
        default=None, metadata={"help": "write the full calibration statistics (with bins) here"})
    calibration_plot: Optional[str] = field(
        default=None, metadata={"help": "write a reliability diagram PNG here"})
    calibration_fit_temperature: bool = field(
        default=False, metadata={"help": "also find the temperature minimising NLL on this set; "
                                         "keeps every target token's log-probabilities (float16, "
                                         "2 bytes x vocabulary per token) in memory"})


def output_file(option: str):
    """argparse type: a path a file can be written to (tried by a real write, then removed)."""
    return cli.checked(option, lambda path: cli.check_output_file(option, path))


@register_task("translation_calibration", dataclass=TranslationCalibrationConfig)
class TranslationCalibrationTask(TranslationTask):
    cfg: TranslationCalibrationConfig

    def __init__(self, cfg: TranslationCalibrationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        check_bins(cfg.calibration_bins)
        self.temperature = 1.0
        self.scored_subset = None
        self.calibration = CalibrationStats(cfg.calibration_bins, adaptive=cfg.calibration_adaptive)
        self._fit_log_probs = []
        self._fit_targets = []
        global ACTIVE_TASK
        ACTIVE_TASK = self

    @classmethod
    def setup_task(cls, cfg: TranslationCalibrationConfig, **kwargs):
        """Check the output paths (by a real write) before the dictionaries, models and data
        (again: a hydra config or a program sets them without the command line's checks)."""
        with cli.exit_on_usage_error():
            for option, path in (("--calibration-json", cfg.calibration_json),
                                 ("--calibration-plot", cfg.calibration_plot)):
                if path is not None:
                    cli.check_output_file(option, path)
        return super().setup_task(cfg, **kwargs)

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        cli.install_checks(parser, {
            "--calibration-bins": cli.int_at_least("--calibration-bins", 1),
            "--temperature": cli.positive_float("--temperature"),
            "--calibration-json": output_file("--calibration-json"),
            "--calibration-plot": output_file("--calibration-plot"),
        })

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        self.scored_subset = split
        return super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)

    def build_generator(self, models, args, *rest, **kwargs):
        self.temperature = float(getattr(args, "temperature", 1.0))
        return super().build_generator(models, args, *rest, **kwargs)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        hypos = super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens,
                                       constraints=constraints)
        if sample.get("target") is not None:
            self.score_teacher_forced(models, sample)
        return hypos

    def score_teacher_forced(self, models, sample) -> None:
        """Add the batch's teacher-forced next-token predictions at ``self.temperature``."""
        lprobs = decoder_log_probs(models, decoder_logits(models, sample), self.temperature)
        target = sample["target"]
        pad = self.target_dictionary.pad()
        self.calibration.update(lprobs, target, ignore_index=pad)
        if self.cfg.calibration_fit_temperature:
            keep = target.ne(pad)
            self._fit_log_probs.append(lprobs[keep].to(torch.float16).cpu())
            self._fit_targets.append(target[keep].cpu())

    def calibration_report(self) -> str:
        """The one-line summary; writes the JSON and the PNG if asked."""
        stats = self.calibration
        result = {"temperature": self.temperature, "subset": self.scored_subset,
                  **stats.to_dict()}
        line = stats.summary(self.temperature)
        if self.cfg.calibration_fit_temperature and self._fit_targets:
            # temperature scaling applied on top of the generation temperature's log-probabilities
            fitted = fit_temperature(torch.cat(self._fit_log_probs).float(),
                                     torch.cat(self._fit_targets))
            result["fitted_temperature"] = self.temperature * fitted
            line += f" | NLL-optimal T {self.temperature * fitted:.3f}"
        if self.cfg.calibration_json:
            write_json(self.cfg.calibration_json, result)
        if self.cfg.calibration_plot:
            from ..plots import reliability_diagram
            reliability_diagram({f"T={self.temperature:g}": result}, self.cfg.calibration_plot,
                                title="Token-level reliability (teacher-forced)")
        return line
