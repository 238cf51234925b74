"""``--task translation_calibration``: fairseq-generate with token-level calibration scoring.

Paper section 3 (Table 3, Fig. 3) and inference calibration (Wang et al. ACL 2020).  For every
batch, after beam search (or sampling) has produced its hypotheses, the task scores, as
``--calibration-mode`` asks (default ``both``; see :mod:`.generation_calibration`):

- *reference*: the model(s) run once more teacher-forced on the reference, reusing the encoder
  outputs beam search computed for the batch (:class:`~ls_plugins.teacher_forcing.EncoderCapture`),
  and every non-pad target position (EOS included) is scored at the generation temperature
  ``--temperature`` (logits / T; ensembles average probabilities as fairseq does);
- *hypothesis*: every token of the top hypothesis, with its generation probability, correct
  when aligned to an identical reference token.

The hypotheses are untouched.  Intervals: ``--calibration-bootstrap B`` replicates over sentences
(0: none) with ``--calibration-seed``, at ``--calibration-level``.  Every sentence of the subset
is scored whatever ``--required-batch-size-multiple`` says (:mod:`.batching`).

``--scoring calibration`` reports the statistics at the end next to sacreBLEU (see
:mod:`ls_plugins.scoring.calibration`); the task writes the JSON and the reliability diagram.
"""

from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from .. import cli
from ..atomic import write_json
from ..calibration import DEFAULT_BINS, check_bins
from ..teacher_forcing import EncoderCapture
from .batching import keep_every_example
from .generation_calibration import (ESTIMATORS, MODES, READING_TITLES, GenerationCalibration,
                                     check_mode, parse_estimators)

# The task instance of this process whose statistics the ``calibration`` scorer reports: fairseq
# builds the scorer from its own config only, so the two meet here.
ACTIVE_TASK = None


@dataclass
class TranslationCalibrationConfig(TranslationConfig):
    calibration_bins: int = field(
        default=DEFAULT_BINS, metadata={"help": "number of equal-width confidence bins (>= 1)"})
    calibration_mode: str = field(
        default="both", metadata={"help": f"which token-level calibration to measure: "
                                          f"{', '.join(MODES)} (reference: next-token predictions "
                                          f"given the reference prefix; hypothesis: the generated "
                                          f"tokens, correct when aligned to the reference)"})
    calibration_bootstrap: int = field(
        default=200, metadata={"help": "bootstrap replicates over sentences for the intervals "
                                       "(0: no intervals)"})
    calibration_seed: int = field(
        default=0, metadata={"help": "seed of the bootstrap weights (same seed, same sentences: "
                                     "paired intervals between runs)"})
    calibration_level: float = field(
        default=0.95, metadata={"help": "level of the intervals, in (0, 1)"})
    calibration_estimators: str = field(
        default="", metadata={"help": f"further estimators, comma-separated: "
                                      f"{', '.join(ESTIMATORS)} (debiased squared calibration "
                                      f"error, all-class ECE of the reference reading, equal-mass "
                                      f"ECE; adaptive keeps one confidence per token in memory)"})
    calibration_adaptive: bool = field(
        default=False, metadata={"help": "same as adding 'adaptive' to --calibration-estimators"})
    calibration_json: Optional[str] = field(
        default=None, metadata={"help": "write the full calibration statistics (with bins) here"})
    calibration_plot: Optional[str] = field(
        default=None, metadata={"help": "write a reliability diagram PNG here"})
    calibration_fit_temperature: bool = field(
        default=False, metadata={"help": "also find the temperature minimising the teacher-forced "
                                         "NLL on this set (streamed: memory independent of the "
                                         "number of tokens; within 1%% of the exact fit)"})


def output_file(option: str):
    """argparse type: a path a file can be written to (tried by a real write, then removed)."""
    return cli.checked(option, lambda path: cli.check_output_file(option, path))


def estimators_of(cfg: TranslationCalibrationConfig) -> tuple[str, ...]:
    names = parse_estimators(cfg.calibration_estimators)
    return names + ("adaptive",) if cfg.calibration_adaptive and "adaptive" not in names else names


@register_task("translation_calibration", dataclass=TranslationCalibrationConfig)
class TranslationCalibrationTask(TranslationTask):
    cfg: TranslationCalibrationConfig

    def __init__(self, cfg: TranslationCalibrationConfig, src_dict, tgt_dict):
        super().__init__(cfg, src_dict, tgt_dict)
        with cli.exit_on_usage_error():
            check_bins(cfg.calibration_bins)
            self.calibration = GenerationCalibration(
                cfg.calibration_bins, mode=check_mode(cfg.calibration_mode),
                bootstrap=cli.check_int_at_least("--calibration-bootstrap",
                                                 cfg.calibration_bootstrap, 0),
                seed=cli.check_int_at_least("--calibration-seed", cfg.calibration_seed, 0),
                level=cfg.calibration_level, estimators=estimators_of(cfg),
                fit_temperature=cfg.calibration_fit_temperature)
        self.temperature = 1.0
        self.scored_subset = None
        self.encoder_capture: Optional[EncoderCapture] = None
        keep_every_example(self)  # fairseq's batches plus the last one it would drop
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
            "--calibration-mode": cli.one_of("--calibration-mode", MODES),
            "--calibration-bootstrap": cli.int_at_least("--calibration-bootstrap", 0),
            "--calibration-seed": cli.int_at_least("--calibration-seed", 0),
            "--calibration-level": cli.open_unit("--calibration-level"),
            "--calibration-estimators": cli.checked(
                "--calibration-estimators",
                lambda text: ",".join(parse_estimators(text, "--calibration-estimators"))),
            "--temperature": cli.positive_float("--temperature"),
            "--calibration-json": output_file("--calibration-json"),
            "--calibration-plot": output_file("--calibration-plot"),
        })

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        self.scored_subset = split
        return super().load_dataset(split, epoch=epoch, combine=combine, **kwargs)

    def build_generator(self, models, args, *rest, **kwargs):
        self.temperature = float(getattr(args, "temperature", 1.0))
        generator = super().build_generator(models, args, *rest, **kwargs)
        self.encoder_capture = EncoderCapture(generator)
        return generator

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        hypos = super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens,
                                       constraints=constraints)
        encoder_outs = self.encoder_capture.take() if self.encoder_capture is not None else None
        if sample.get("target") is not None:
            self.calibration.add_batch(models, sample, hypos, self.temperature,
                                       self.target_dictionary.pad(), encoder_outs)
        return hypos

    def subset_size(self) -> Optional[int]:
        if self.scored_subset is None or self.scored_subset not in self.datasets:
            return None
        return len(self.datasets[self.scored_subset])

    def calibration_report(self) -> str:
        """The summary lines; writes the JSON and the PNG if asked."""
        total = self.subset_size()
        result = self.calibration.to_dict(self.temperature, self.scored_subset, total)
        if self.cfg.calibration_json:
            write_json(self.cfg.calibration_json, result)
        if self.cfg.calibration_plot:
            from ..plots import reliability_panels
            curve = f"T={self.temperature:g}"
            panels = {READING_TITLES[reading]: {curve: self.calibration.reading_dict(stats)}
                      for reading, stats in self.calibration.readings().items()}
            reliability_panels(panels, self.cfg.calibration_plot,
                               title=f"Token-level reliability ({self.scored_subset})")
        return "\n".join(self.calibration.lines(self.temperature, total))
