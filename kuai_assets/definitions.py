"""The whole pipeline: raw -> visual -> features -> model. See README.md for the picture.

Every asset, check and job is found in the modules of `kuai_assets/defs/` by Dagster's own
autoloader (`load_defs`); this module adds what is chosen per deployment: the resources (from the
workspace's settings), the executor and the console logger (kuai_assets/console.py).
"""

import dagster as dg

import kuai_assets.defs
from kuai_assets import settings
from kuai_assets.console import console_logger
from kuai_assets.defs.resources import default_resources

# KUAI_EXECUTOR=multiprocess: steps in parallel processes, forked from a server that has imported
# this module once (a spawned step would pay seconds of imports each); the LightGBM steps, which
# use every core, one at a time.
MULTIPROCESS_EXECUTOR = dg.multiprocess_executor.configured(
    {
        "max_concurrent": 2,
        "tag_concurrency_limits": [{"key": "kuai/cpu", "value": "lightgbm", "limit": 1}],
        "start_method": {"forkserver": {"preload_modules": ["kuai_assets.definitions"]}},
    }
)
EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": MULTIPROCESS_EXECUTOR}


def chosen_executor() -> dg.ExecutorDefinition:
    """The executor KUAI_EXECUTOR names (the environment, else the workspace's .env).

    in_process by default: the heavy steps (DuckDB, LightGBM, torch) use every core by themselves,
    and one process spares each step a process of its own and its copy of the imports
    (benchmarks/loop.py, BENCHMARKS.md).
    """
    kind = settings.value("KUAI_EXECUTOR") or "in_process"
    if kind not in EXECUTORS:
        raise ValueError(f"KUAI_EXECUTOR={kind!r}: choose one of {', '.join(EXECUTORS)}")
    return EXECUTORS[kind]


EXECUTOR = chosen_executor()

defs = dg.Definitions.merge(
    dg.load_defs(defs_root=kuai_assets.defs),
    dg.Definitions(resources=default_resources(), executor=EXECUTOR, loggers={"console": console_logger}),
)


def everything_job() -> dg.JobDefinition:
    """The `everything` job, resolvable from this module (for `kuai run` and dagster.reconstructable)."""
    return defs.resolve_job_def("everything")
