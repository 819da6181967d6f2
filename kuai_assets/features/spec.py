"""The spec of a table model (a SQL file or a Python feature group): what the platform knows of it.

Plain data; the catalog (catalog.py) reads SQL files and discovers Python groups into these.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

FEATURE_LAYER = "features"
# columns of raw_interactions that are outcomes of the impression: a feature group never sees
# them there (its view of raw_interactions leaves them out); label statistics read label_history
LABEL_COLUMNS = ("click", "like", "follow", "playing_time")


class CatalogError(ValueError):
    pass


@dataclass(frozen=True)
class GroupLog:
    """What a Python feature group's `compute(con, out, log)` is handed to say what it does.

    `log(message)` is for what a person running the step reads (the run's console and the UI, at
    INFO); `log.debug(message)` for diagnostics (per-fold figures and the like), kept in the UI's
    log at DEBUG and out of the console. Built from plain callables, so any caller can hand one in.
    """

    info: Callable[[str], None] = lambda message: None
    debug: Callable[[str], None] = lambda message: None

    def __call__(self, message: str) -> None:
        self.info(message)

    @classmethod
    def of(cls, log: "Callable[[str], None] | GroupLog") -> "GroupLog":
        """`log` as it is when already a GroupLog; a plain callable takes INFO and drops DEBUG."""
        return log if isinstance(log, GroupLog) else cls(info=log)


QUIET = GroupLog()


@dataclass(frozen=True)
class Variable:
    name: str
    default: float | int
    description: str


@dataclass(frozen=True)
class TableModel:
    """A table computed from other tables: a SQL file, or a Python feature group."""

    name: str
    layer: str
    description: str
    grain: tuple[str, ...]
    upstream: tuple[str, ...]
    continuous: tuple[str, ...] = ()
    discrete: tuple[str, ...] = ()
    # derived by the catalog from the lineage (see catalog.load_catalog), never declared
    uses_labels: bool = False
    uses_scored_window_log: bool = False
    enabled_by_default: bool = True
    variables: tuple[Variable, ...] = ()
    sql: str | None = None
    path: Path | None = None
    # the SQL file's source when it calls `columns(table, prefix)`: `sql` is then its rendering with
    # stand-in columns, and the runner renders it again over the tables it reads (catalog.render_sql)
    template: str | None = None
    compute: Callable[..., Any] | None = field(default=None, compare=False)
    # a Python group with no distributed definition says why here; under the Spark engine its
    # compute function then runs on the driver (features/runner.py) instead of being refused
    driver_only: str | None = None

    @property
    def is_feature_group(self) -> bool:
        return self.layer == FEATURE_LAYER

    @property
    def kind(self) -> str:
        return "sql" if self.sql is not None else "python"

    @property
    def has_fast_path(self) -> bool:
        """A SQL definition with a Python fast path (what DuckDB runs; Spark runs the SQL)."""
        return self.sql is not None and self.compute is not None

    @property
    def code_version(self) -> str:
        """A hash of the SQL, and of the Python group's module and the kuai_assets.features
        modules it imports from (so a change in a shared helper marks the group stale too)."""
        parts = [self.sql] if self.sql is not None else []
        if self.template is not None:
            parts.append(self.template)
        if self.compute is not None:
            parts.append(self._python_source())
        return hashlib.sha256("".join(parts).encode()).hexdigest()[:12]

    def _python_source(self) -> str:
        """The group's module and, transitively, every kuai_assets.features module it draws on."""
        module = inspect.getmodule(self.compute)
        modules = {module.__name__: module}
        pending = [module]
        while pending:
            for value in vars(pending.pop()).values():
                source_module = inspect.getmodule(value)
                if (
                    source_module is not None
                    and source_module.__name__.startswith("kuai_assets.features.")
                    and source_module.__name__ not in modules
                ):
                    modules[source_module.__name__] = source_module
                    pending.append(source_module)
        modules.pop(__name__, None)  # the spec itself (TableModel) is not the group's logic
        return "".join(inspect.getsource(modules[name]) for name in sorted(modules))

    def column_kind(self, column: str) -> str | None:
        """'continuous', 'discrete', or None for a column the header does not declare."""
        for kind, patterns in (("continuous", self.continuous), ("discrete", self.discrete)):
            if any(fnmatch.fnmatchcase(column, p) for p in patterns):
                return kind
        return None

    def check_columns(self, columns: list[str]) -> list[tuple[str, str]]:
        """Match a materialized table's columns against the header; return (column, kind) features."""
        where = self.path or self.name
        missing_keys = [k for k in self.grain if k not in columns]
        if missing_keys:
            raise CatalogError(f"{where}: grain column(s) {missing_keys} are not in the result")
        features = []
        undeclared = []
        for column in columns:
            if column in self.grain:
                continue
            kind = self.column_kind(column)
            if kind is None:
                undeclared.append(column)
            else:
                features.append((column, kind))
        if self.is_feature_group and undeclared:
            raise CatalogError(
                f"{where}: column(s) {undeclared} are neither grain nor declared continuous/discrete in the header"
            )
        declared = [p for p in self.continuous + self.discrete if "*" not in p and "?" not in p]
        absent = [p for p in declared if p not in columns]
        if absent:
            raise CatalogError(f"{where}: declared column(s) {absent} are not in the result")
        return features


