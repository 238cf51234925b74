"""``--scoring calibration``: sacreBLEU plus the token-level calibration lines.

fairseq-generate prints ``scorer.result_string()`` once at the end; this scorer computes BLEU
with sacrebleu (exactly like ``--scoring sacrebleu``, same ``--sacrebleu-*`` options) and appends
the calibration summary of ``--task translation_calibration``, one line per reading::

    Generate test with beam=5: BLEU = 27.10 58.2/33.1/20.8/13.4 (BP = ...)
    Calibration (reference) | T 1.00 | bins 15 equal-width | sentences 500/500 | tokens 12345 | ECE 0.0312 [0.0270, 0.0356] | ...
    Calibration (hypothesis) | T 1.00 | bins 15 equal-width | sentences 500/500 | tokens 11876 | ECE ... | ...
"""
from dataclasses import dataclass

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.scoring import register_scorer
from fairseq.scoring.bleu import SacrebleuConfig, SacrebleuScorer

from .. import cli
from ..tasks import translation_calibration


@dataclass
class CalibrationScorerConfig(SacrebleuConfig):
    pass


TASK = "translation_calibration"


def check_task(task: str) -> str:
    """The ``--task`` value ``--scoring calibration`` works with (checked while parsing)."""
    if task != TASK:
        raise cli.bad_value("--scoring calibration", f"needs --task {TASK}", f"--task {task}")
    return task


@register_scorer("calibration", dataclass=CalibrationScorerConfig)
class CalibrationScorer(SacrebleuScorer):
    @classmethod
    def add_args(cls, parser):
        """The scorer's options, and a check of ``--task`` (also applied to its default)."""
        gen_parser_from_dataclass(parser, CalibrationScorerConfig())
        cli.install_checks(parser, {"--task": cli.checked("--scoring calibration", check_task)})

    def __init__(self, cfg):
        super().__init__(cfg)
        self.task = translation_calibration.ACTIVE_TASK
        if self.task is None:
            cli.exit_with_error(f"--scoring calibration: needs --task {TASK}")

    def result_string(self, order=4):
        return f"{super().result_string(order)}\n{self.task.calibration_report()}"
