"""fairseq scorers: ``calibration`` (sacreBLEU plus the calibration report)."""
from . import calibration  # noqa: F401
