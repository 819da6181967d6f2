"""Jobs for the common paths. The same selections work with `dagster asset materialize --select`."""


import dagster as dg

# everything: the whole graph, raw files to evaluation
EVERYTHING = dg.AssetSelection.all()
# retrain: from the training matrix down (after a feature or model change)
RETRAIN = dg.AssetSelection.assets("training_matrix").downstream()
# rescore: the submission and its evaluation from the recorded model
RESCORE = dg.AssetSelection.assets("submission", "evaluation")

JOBS = [
    dg.define_asset_job("everything", EVERYTHING, description="Materialize every asset: raw files to evaluation."),
    dg.define_asset_job(
        "retrain", RETRAIN, description="Rebuild the training matrix, retrain the models, rescore and evaluate."
    ),
    dg.define_asset_job("rescore", RESCORE, description="Write the submission from the recorded model and evaluate it."),
]
