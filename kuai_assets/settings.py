"""Every setting the platform reads from the environment, in one place, and the workspace that
keeps them.

A *workspace* is one work dir: everything the pipeline writes (tables, stores, the Dagster
instance, the MLflow store) and the settings it was made with. `kuai` records those settings in
the work dir twice, in the same values: `<work>/env.sh` (source it in a fresh shell) and
`<work>/.env` (dotenv; the dagster CLI reads it when started from the work dir, and this module
reads it for any setting the environment leaves unset). So whichever shell, CLI or UI comes next,
it reads and writes the same workspace.

A setting's value is, first found: the environment variable; the workspace's `.env`; the default.
The work dir itself is KUAI_WORK_DIR, else the folder holding DAGSTER_HOME when that folder is a
workspace (has a `.env` naming itself), else `.kuai/` in the repo. `kuai` command-line options
(`--work`, `--data`, `--size`) come before all of these.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent

WORKSPACE_FILE = ".env"
ENV_SCRIPT = "env.sh"
DEFAULT_SIZE = "demo"
DEFAULT_MLFLOW_UI_PORT = 5000


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # what applies when it is unset, as a person reads it
    meaning: str
    recorded: bool = False  # kept in the workspace's .env (and exported by env.sh unless `live`)
    live: bool = False  # the .env's value comes first and is read when used (a running UI follows it); not exported


SETTINGS: tuple[Setting, ...] = (
    Setting("KUAI_WORK_DIR", ".kuai/ in the repo", "the workspace: everything the pipeline writes, and these settings", True),
    Setting(
        "KUAI_DATA_DIR",
        "<work>/data/<size>",
        "the dataset in the released layout (train/, test/); the default is the synthetic dataset, "
        "generated there on first use",
        True,
    ),
    Setting("KUAI_SYNTH_SIZE", DEFAULT_SIZE, "size of the default synthetic dataset (tiny, demo, ...: kuai_assets/synth/sizes.py)", True),
    Setting("DAGSTER_HOME", "<work>/dagster_home", "the Dagster instance shared by `kuai run`, the UI and the dagster CLI", True),
    Setting("MLFLOW_TRACKING_URI", "sqlite:///<work>/mlflow/mlflow.db", "the MLflow tracking store", True),
    Setting(
        "KUAI_MLFLOW_UI_URL",
        f"http://127.0.0.1:{DEFAULT_MLFLOW_UI_PORT}",
        "where the MLflow UI is served (the Dagster `mlflow_run` links); `kuai mlflow-ui --port` records it "
        "in the workspace's .env, whose value comes first for this one (a running UI follows it)",
        True,
        True,
    ),
    Setting(
        "KUAI_EXECUTOR",
        "in_process",
        "how a Dagster run executes its steps: in_process (one after the other, in the run's process) or "
        "multiprocess (two at a time, each in a forked process)",
        True,
    ),
    Setting("KUAI_DUCKDB_MEMORY", "8GB", "DuckDB's memory limit per connection"),
    Setting("KUAI_DUCKDB_THREADS", "the number of cores", "DuckDB's threads per connection"),
    Setting("KUAI_SQL_DIR", "dbt_like_sql/ in the repo", "the SQL feature groups"),
    Setting("KUAI_ENGINE", "duckdb", "the SQL engine of the feature groups: duckdb or spark (the `engine` resource)", True),
    Setting(
        "KUAI_SPARK_URL", "the engine resource's default", "`local[N]` or a Spark Connect server `sc://host:port` (KUAI_ENGINE=spark)",
        True,
    ),
    Setting("KUAI_SPARK_DRIVER_MEMORY", "2g", "the local Spark driver's memory (KUAI_ENGINE=spark)", True),
    Setting("MLFLOW_HTTP_REQUEST_TIMEOUT", "10 (MLflow's own: 120)", "seconds an MLflow HTTP request may take"),
    Setting(
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false for `kuai mlflow-ui`", "MLflow server jobs (the platform uses none)"
    ),
    Setting("MLFLOW_LOGGING_LEVEL", "WARNING (MLflow's own: INFO)", "MLflow's loggers' level"),
    Setting("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2 (MLflow's own: 7)", "retries of a failed MLflow HTTP request"),
)
BY_NAME = {s.name: s for s in SETTINGS}
# how runs execute: recorded in the workspace only when set (the environment's value, or the
# workspace's), so a fresh shell, the UI and `kuai run` run the workspace the same way
EXECUTION_SETTINGS = ("KUAI_EXECUTOR", "KUAI_ENGINE", "KUAI_SPARK_URL", "KUAI_SPARK_DRIVER_MEMORY")


def environment_help() -> str:
    """The settings as the `--help` of `kuai` lists them."""
    width = max(len(s.name) for s in SETTINGS)
    return "environment (first found: option, environment variable, the workspace's .env, default):\n" + "\n".join(
        f"  {s.name:<{width}}  {s.meaning} (default: {s.default})" for s in SETTINGS
    )


def is_live(name: str) -> bool:
    """A setting read from the workspace's .env when used (env.sh does not export it)."""
    return name in BY_NAME and BY_NAME[name].live


# -- the workspace file ----------------------------------------------------------------------------


def read_workspace_file(work: Path) -> dict[str, str]:
    """The settings recorded in `<work>/.env` (KEY=value lines; # comments); {} if absent."""
    path = Path(work) / WORKSPACE_FILE
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().removeprefix("export ").strip()
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value]
        values[key] = parts[0] if len(parts) == 1 else value.strip()
    return values


def write_workspace_files(work: Path, values: dict[str, str], preamble: list[str] = ()) -> None:
    """Write `<work>/.env` and `<work>/env.sh` with the same values (each through a temporary name)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    header = "# written by `kuai`: this workspace's settings"
    dotenv = [header + " (read by kuai and, from this folder, by the dagster CLI)"]
    dotenv += [f"{k}={shlex.quote(v)}" for k, v in values.items()]
    script = [header + ": `source` it in a fresh shell to use this workspace", *preamble]
    script += [f"export {k}={shlex.quote(v)}" for k, v in values.items() if not is_live(k)]
    for name, lines in ((WORKSPACE_FILE, dotenv), (ENV_SCRIPT, script)):
        temporary = work / f".{name}.tmp-{os.getpid()}"
        temporary.write_text("\n".join(lines) + "\n")
        temporary.replace(work / name)


# -- resolution ------------------------------------------------------------------------------------


def default_work_dir() -> Path:
    """KUAI_WORK_DIR; else the workspace holding DAGSTER_HOME; else .kuai/ in the repo."""
    if os.environ.get("KUAI_WORK_DIR"):
        return Path(os.environ["KUAI_WORK_DIR"]).absolute()
    if os.environ.get("DAGSTER_HOME"):
        parent = Path(os.environ["DAGSTER_HOME"]).absolute().parent
        recorded = read_workspace_file(parent).get("KUAI_WORK_DIR")
        if recorded and Path(recorded).absolute() == parent:
            return parent
    base = REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()
    return base / ".kuai"


def value(name: str, work: Path | None = None, environment: bool = True) -> str | None:
    """The environment's value of setting `name` (unless `environment` is False), else the
    workspace's recorded one, else None."""
    recorded = read_workspace_file(work or default_work_dir()).get(name) or None
    if is_live(name) and recorded:
        # the workspace's current value: a process started earlier (the UI, its code server,
        # which also load the .env into their environment) must follow a change
        return recorded
    if environment and os.environ.get(name):
        return os.environ[name]
    return recorded


def synthetic_size(work: Path | None = None) -> str:
    return value("KUAI_SYNTH_SIZE", work) or DEFAULT_SIZE


def synthetic_data_dir(work_dir: Path | None = None, size: str | None = None) -> Path:
    """The default dataset: synthetic, generated on first use in the workspace's data/ folder."""
    work = Path(work_dir or default_work_dir())
    return work / "data" / (size or synthetic_size(work))


def default_data_dir(work: Path | None = None) -> Path:
    work = Path(work or default_work_dir())
    recorded = value("KUAI_DATA_DIR", work)
    return Path(recorded).absolute() if recorded else synthetic_data_dir(work)


def default_tracking_uri(work: Path | None = None) -> str:
    work = Path(work or default_work_dir())
    return value("MLFLOW_TRACKING_URI", work) or f"sqlite:///{work.absolute()}/mlflow/mlflow.db"


def mlflow_ui_url(work: Path | None = None) -> str:
    return (value("KUAI_MLFLOW_UI_URL", work) or f"http://127.0.0.1:{DEFAULT_MLFLOW_UI_PORT}").rstrip("/")


def dagster_home(work: Path | None = None) -> Path:
    work = Path(work or default_work_dir())
    recorded = value("DAGSTER_HOME", work)
    return Path(recorded).absolute() if recorded else work / "dagster_home"


@dataclass(frozen=True)
class Workspace:
    """One work dir and the settings it runs with (see the module's docstring)."""

    work_dir: Path
    data_dir: Path
    size: str
    dagster_home: Path
    tracking_uri: str
    mlflow_ui_url: str
    # how the workspace's runs execute (KUAI_EXECUTOR, KUAI_ENGINE, ...), those that are set
    execution: tuple[tuple[str, str], ...] = ()

    @property
    def generates_its_data(self) -> bool:
        """Whether the dataset is this workspace's synthetic default (generated on first use)."""
        return self.data_dir.absolute() == synthetic_data_dir(self.work_dir, self.size).absolute()

    def recorded(self) -> dict[str, str]:
        return {
            "KUAI_WORK_DIR": str(self.work_dir),
            "KUAI_DATA_DIR": str(self.data_dir),
            "KUAI_SYNTH_SIZE": self.size,
            "DAGSTER_HOME": str(self.dagster_home),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "KUAI_MLFLOW_UI_URL": self.mlflow_ui_url,
            **dict(self.execution),
        }


def resolve_workspace(
    work: Path | str | None = None, data: Path | str | None = None, size: str | None = None, mlflow_ui: str | None = None
) -> Workspace:
    """The workspace: the arguments given, then the environment, the workspace's .env, the defaults.

    A dataset given without a size keeps the size recorded; a size given without a dataset moves
    the default dataset to `<work>/data/<size>` unless a dataset is set.
    """
    work_dir = Path(work).absolute() if work else default_work_dir()
    # the environment describes another workspace (a sourced env.sh, then `--work` elsewhere):
    # this one's settings come from its own .env and the defaults
    env_work = os.environ.get("KUAI_WORK_DIR")
    environment = not (env_work and Path(env_work).absolute() != work_dir)

    def get(name: str) -> str | None:
        return value(name, work_dir, environment)

    old_size = get("KUAI_SYNTH_SIZE") or DEFAULT_SIZE
    chosen_size = size or old_size
    if data:
        data_dir = Path(data).absolute()
    else:
        recorded = get("KUAI_DATA_DIR")
        data_dir = Path(recorded).absolute() if recorded else work_dir / "data" / chosen_size
        if recorded and data_dir == (work_dir / "data" / old_size).absolute():
            data_dir = work_dir / "data" / chosen_size  # the synthetic default, at the size asked for
    home = get("DAGSTER_HOME")
    execution = tuple((name, found) for name in EXECUTION_SETTINGS if (found := get(name)))
    return Workspace(
        work_dir=work_dir,
        data_dir=data_dir,
        size=chosen_size,
        dagster_home=Path(home).absolute() if home else work_dir / "dagster_home",
        tracking_uri=get("MLFLOW_TRACKING_URI") or f"sqlite:///{work_dir}/mlflow/mlflow.db",
        mlflow_ui_url=(mlflow_ui or get("KUAI_MLFLOW_UI_URL") or f"http://127.0.0.1:{DEFAULT_MLFLOW_UI_PORT}").rstrip("/"),
        execution=execution,
    )
