"""Pipeline plumbing used by stage scripts only: stage runner, signals, MLflow tracking and registry, recipes."""
