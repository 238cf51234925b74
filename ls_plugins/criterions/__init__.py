"""fairseq criteria: ``smoothed_ce`` and ``distillation_ce`` (registered on import)."""
from . import distillation_ce, smoothed_ce  # noqa: F401
