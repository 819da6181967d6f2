"""The whole pipeline: raw -> visual -> features -> model. See README.md for the picture.

Every asset, check and job is found in the modules of `kuai_assets/defs/` by Dagster's own
autoloader (`load_defs`); this module adds what is chosen per deployment: the resources (from the
workspace's settings) and the executor.
"""

import dagster as dg

import kuai_assets.defs
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

defs = dg.Definitions.merge(
    dg.load_defs(defs_root=kuai_assets.defs),
    dg.Definitions(resources=default_resources(), executor=EXECUTOR),
)


def everything_job() -> dg.JobDefinition:
    """The `everything` job, resolvable from this module (for `kuai run` and dagster.reconstructable)."""
    return defs.resolve_job_def("everything")
