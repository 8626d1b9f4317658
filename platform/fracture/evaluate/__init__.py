"""Scoring a model on images: model source, rows, holdout report, batch prediction, Grad-CAM, plots."""
