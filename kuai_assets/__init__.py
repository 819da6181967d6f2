"""kuai_assets: short-video user-interest modeling as Dagster software-defined assets."""

import os

# Dagster runs steps in parallel processes; OpenMP threads that spin while waiting (LightGBM's
# default) slow two concurrent steps down six-fold on a 2-core machine. Passive waiting costs
# nothing when a step runs alone. Must be set before lightgbm is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
