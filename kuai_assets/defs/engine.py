"""The `engine` resource: which engine runs the table models (DuckDB, or Spark at a URL).

Editable in the Launchpad; defaults from KUAI_ENGINE (duckdb | spark) and KUAI_SPARK_URL
(`local[N]`, or a Spark Connect URL `sc://host:port`): the environment's, else the workspace's
.env, where `kuai` records them when they are set. The setting is checked before a table
model reads anything (kuai_assets.engines.Engine.check).
"""

import dagster as dg
from pydantic import Field

from kuai_assets import settings
from kuai_assets.engines import DEFAULT_SPARK_URL, ENGINE_KINDS, Engine, EngineError


class EngineResource(dg.ConfigurableResource):
    """Where the table models run: `duckdb` (one machine, the default) or `spark`."""

    kind: str = Field(default="duckdb", description=f"One of {', '.join(ENGINE_KINDS)}. KUAI_ENGINE.")
    spark_url: str = Field(
        default=DEFAULT_SPARK_URL,
        description="For kind spark: `local[N]` (Spark in the step's process, N threads; needs Java 17+) or a "
        "Spark Connect server `sc://host:port` whose cluster shares the work dir. KUAI_SPARK_URL.",
    )

    def engine(self) -> Engine:
        """The checked engine; a bad setting fails the step before any work, naming what is wrong."""
        try:
            return Engine(self.kind, self.spark_url).check()
        except EngineError as err:
            raise dg.Failure(description=str(err)) from None


def default_engine_resource() -> EngineResource:
    """From KUAI_ENGINE and KUAI_SPARK_URL: the environment's, else the workspace's .env."""
    return EngineResource(
        kind=settings.value("KUAI_ENGINE") or "duckdb", spark_url=settings.value("KUAI_SPARK_URL") or DEFAULT_SPARK_URL
    )
