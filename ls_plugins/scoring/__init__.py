"""fairseq scorers (the calibration report)."""
