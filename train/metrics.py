"""Metrics live in device/ (the board computes them too); re-exported for the training side."""
from device.metrics import confusion, expected_calibration_error, softmax, summarize  # noqa: F401
