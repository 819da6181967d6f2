"""Shared fixtures (a tiny synthetic dataset, a work dir with the whole graph materialized and
one Spark `local[2]` session, all session-scoped: made once, used by many tests) and the test tiers.

Every test gets exactly one tier marker (registered in pyproject.toml):

- `system`: the tests of test_browser.py and test_robustness.py (browsers, servers, killed and
  concurrent runs in subprocesses), whatever fixtures they use;
- `pipeline`: any other test that uses the `materialized` fixture, directly or through another
  fixture, or that is marked `pipeline` explicitly because it materializes assets itself;
- `unit`: everything else: no materialized session, seconds each.

so `pytest -m unit` never materializes the graph. A test marked with a tier explicitly keeps it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kuai_assets.engines import Engine

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("KUAI_DUCKDB_MEMORY", "2GB")

TIERS = ("unit", "pipeline", "system")
SYSTEM_FILES = frozenset({"test_browser.py", "test_robustness.py"})


def tier_of(file_name: str, fixture_names, explicit_tiers) -> str:
    """The tier of a test: its explicit tier marker if it has one, else by file, else by fixture.

    `fixture_names` is every fixture the test needs, transitively (pytest's item.fixturenames).
    Refuses a test marked with two tiers.
    """
    explicit = sorted(set(explicit_tiers))
    if len(explicit) > 1:
        raise ValueError(f"{file_name}: a test has one tier, not {explicit}")
    if explicit:
        return explicit[0]
    if file_name in SYSTEM_FILES:
        return "system"
    if "materialized" in fixture_names:
        return "pipeline"
    return "unit"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        explicit = [m.name for m in item.iter_markers() if m.name in TIERS]
        try:
            tier = tier_of(item.path.name, item.fixturenames, explicit)
        except ValueError as error:
            raise pytest.UsageError(f"{item.nodeid}: {error}") from None
        if not explicit:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from kuai_assets.synth import generate, get_size

    root = tmp_path_factory.mktemp("data") / "tiny"
    generate(root, get_size("tiny"), seed=11)
    return root


def make_resources(data_dir: Path, work_dir: Path) -> dict:
    from kuai_assets.defs.engine import EngineResource
    from kuai_assets.defs.resources import WorkspaceResource, TrackingResource

    return {
        "engine": EngineResource(),
        "workspace": WorkspaceResource(data_dir=str(data_dir), work_dir=str(work_dir)),
        "tracking": TrackingResource(
            tracking_uri=f"sqlite:///{work_dir}/mlflow/mlflow.db", artifact_root=str(work_dir / "mlflow" / "artifacts")
        ),
    }


# Spark in the tests: a JVM that starts fast (the C1 compiler only) and few shuffle partitions (the
# tables are tiny). C1 alone shrinks the JVM's default code cache from 240 MB to 48 MB, which the
# session's generated query classes can fill ("CodeCache is full", then a dead JVM and every later
# Spark and MLflow call refused); the code cache is reserved at the default size again.
TEST_SPARK = Engine(
    "spark",
    "local[2]",
    (
        ("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m"),
        ("spark.sql.shuffle.partitions", "2"),
    ),
)


# the tiny graph runs with light LightGBM settings: the tests check behaviour, not top AUC
TINY_RUN_CONFIG = {
    "ops": {
        "feature_group_ablation": {"config": {"max_fit_rows": 20_000, "max_rounds": 60, "early_stopping_rounds": 10}},
        "model": {"config": {"max_rounds": 300, "early_stopping_rounds": 30}},
        "baseline_model": {"config": {"max_rounds": 200, "early_stopping_rounds": 20}},
        "attention_model": {"config": {"max_epochs": 2, "fit_targets_per_epoch": 20_000, "leak_check_targets": 5_000}},
    }
}


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The session's one Spark JVM (`TEST_SPARK`'s URL and settings), started when a test first
    asks for it and stopped when the session ends; fails, naming the reason, without Java.

    Every Spark use in the tests (`materialize_table_model(..., engine=TEST_SPARK)`, an
    `EngineResource(kind="spark", spark_url="local[2]")`) finds this session: there is one per URL
    per process (kuai_assets.engines.spark.spark_session).
    """
    from kuai_assets.engines.spark import java_problem, spark_session, stop_sessions

    problem = java_problem()
    if problem:
        pytest.fail(f"the Spark tests need Java: {problem}")
    session = spark_session(TEST_SPARK.spark_url, tmp_path_factory.mktemp("spark_tmp"), TEST_SPARK.spark_conf)
    yield session
    stop_sessions()


# the attention network at its smallest, for a test of the graph's wiring (that it runs), not its AUC
SMALLEST_ATTENTION = {
    "history_length": 8,
    "max_epochs": 1,
    "fit_targets_per_epoch": 5_000,
    "item_dim": 8,
    "leak_check_targets": 1_000,
    "threads": 1,
}


# a local Dagster instance that never calls home (as `kuai` writes it)
DAGSTER_YAML = "telemetry:\n  enabled: false\n"


@pytest.fixture(scope="session")
def materialized(tiny_data, tmp_path_factory):
    """Materialize every asset and check of the real definitions on the tiny dataset, in process.

    The run is recorded in a persistent Dagster instance at `dagster_home` (inside the work dir,
    as `kuai` lays it out), so a webserver started with DAGSTER_HOME there shows its
    materializations and their metadata.
    """
    import dagster as dg

    from kuai_assets.definitions import defs

    work = tmp_path_factory.mktemp("work")
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            instance=instance,
            resources=make_resources(tiny_data, work),
            run_config=TINY_RUN_CONFIG,
            raise_on_error=True,
        )
    return {"result": result, "work": work, "data": tiny_data, "dagster_home": home}
