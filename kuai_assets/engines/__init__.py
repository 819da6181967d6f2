"""Engines that run the table models: DuckDB (the default, one machine) or Spark (a cluster).

The same definitions run on both: a SQL file is written in DuckDB's dialect and carried to
Spark's by sqlglot (see portability.py); a Python feature group with a SQL definition runs its
numpy fast path under DuckDB and its SQL on Spark. `Engine.check()` refuses a bad setting before
any work: an unknown kind, a malformed Spark URL, an unreachable Spark Connect server (within a
few seconds), or a local Spark without Java.
"""

from __future__ import annotations

from dataclasses import dataclass

from kuai_assets.engines.spark import CONNECT_TIMEOUT_SECONDS, SparkSettingError, check_spark_url

ENGINE_KINDS = ("duckdb", "spark")
DEFAULT_SPARK_URL = "local[2]"


class EngineError(ValueError):
    """The engine setting cannot work: named with what is wrong."""


@dataclass(frozen=True)
class Engine:
    kind: str = "duckdb"
    spark_url: str = DEFAULT_SPARK_URL
    # extra Spark settings (key, value), e.g. executor memory; applied when the session starts
    spark_conf: tuple[tuple[str, str], ...] = ()

    @property
    def is_spark(self) -> bool:
        return self.kind == "spark"

    def check(self, timeout: float = CONNECT_TIMEOUT_SECONDS) -> "Engine":
        if self.kind not in ENGINE_KINDS:
            raise EngineError(f"engine kind {self.kind!r} is not one of {', '.join(ENGINE_KINDS)}")
        if self.is_spark:
            try:
                check_spark_url(self.spark_url, timeout)
            except SparkSettingError as err:
                raise EngineError(f"engine spark (spark_url {self.spark_url!r}): {err}") from None
        return self


DUCKDB = Engine("duckdb")

__all__ = ["Engine", "EngineError", "ENGINE_KINDS", "DEFAULT_SPARK_URL", "DUCKDB"]
