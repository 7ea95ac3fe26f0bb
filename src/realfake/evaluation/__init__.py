"""Evaluation: scoring, metrics with intervals, calibration, thresholds, OOD scores, robustness, cross-evaluation,
Grad-CAM, and rendering reports and figures."""
