"""fairseq tasks: ``translation_calibration`` (teacher-forced calibration in fairseq-generate)."""
from . import translation_calibration  # noqa: F401
