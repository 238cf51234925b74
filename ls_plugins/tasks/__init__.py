"""fairseq tasks: ``translation_calibration`` (token-level calibration in fairseq-generate: the
reference and the hypothesis readings, :mod:`.generation_calibration`; every sentence batched,
:mod:`.batching`)."""
from . import translation_calibration  # noqa: F401
