"""Declarative automation, on from the start wherever a daemon runs (`kuai ui`, `dagster dev`).

`evaluation` carries an eager automation condition (see defs/model.py): this sensor, running by
default, launches it after any model it scores is materialized, so that a retrain from the CLI
(`dagster asset materialize --select model`) gets its test AUC without a second command.
"""

import dagster as dg

evaluation_follows = dg.AutomationConditionSensorDefinition(
    "evaluation_follows_models",
    target=dg.AssetSelection.assets("evaluation"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=15,
    description="Runs `evaluation` after a model it scores has been retrained (its eager condition).",
)
