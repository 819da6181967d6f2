"""The whole pipeline: raw -> visual -> features -> model. See README.md for the picture."""

import dagster as dg

from kuai_assets.defs import attention, checks, features, model, raw, visual
from kuai_assets.defs.jobs import JOBS
from kuai_assets.defs.resources import default_resources

# Steps run in parallel processes, forked from a server that has imported this module once (a
# spawned step would pay seconds of imports each); the LightGBM steps, which use every core, one
# at a time.
EXECUTOR = dg.multiprocess_executor.configured(
    {
        "max_concurrent": 2,
        "tag_concurrency_limits": [{"key": "kuai/cpu", "value": "lightgbm", "limit": 1}],
        "start_method": {"forkserver": {"preload_modules": ["kuai_assets.definitions"]}},
    }
)

defs = dg.Definitions(
    assets=[*dg.load_assets_from_modules([raw, visual, model, attention]), *features.table_model_assets()],
    asset_checks=checks.all_checks(),
    jobs=JOBS,
    resources=default_resources(),
    executor=EXECUTOR,
)


def everything_job() -> dg.JobDefinition:
    """The `everything` job, resolvable from this module (for `kuai run` and dagster.reconstructable)."""
    return defs.resolve_job_def("everything")
