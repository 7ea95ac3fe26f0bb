"""Serving: `realfake predict` / `explain`, the shipped detector, and the MLflow pyfunc of a trained model."""
