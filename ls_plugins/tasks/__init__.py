"""fairseq tasks (the calibration-scoring translation task)."""
