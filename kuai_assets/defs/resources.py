"""Resources: where the data is and where outputs go, and the MLflow tracking store.

Both are editable in the Launchpad (resource config); their defaults are the workspace's settings
(kuai_assets/settings.py: the environment, then the work dir's `.env`). Both check what they
point at before a step that uses them runs (`setup_for_execution`, Dagster's hook that runs in
every step process before the step's code, whether the run came from `kuai run`, the UI or the
dagster CLI): the data layout, and the MLflow store within a bounded time.
"""


from pathlib import Path

import dagster as dg
from pydantic import Field

from kuai_assets import settings
from kuai_assets.formats import layout
from kuai_assets.ml.tracking import EXPERIMENT, Tracker, TrackingError, probe_store
from kuai_assets.storage import WorkDir


class WorkspaceResource(dg.ConfigurableResource):
    """The dataset (in the released layout) and the work dir everything is written to."""

    data_dir: str = Field(description="Folder in the released layout (train/ and test/). KUAI_DATA_DIR.")
    work_dir: str = Field(description="Where every asset writes its output. KUAI_WORK_DIR.")
    ground_truth: str = Field(
        default="",
        description="Test labels (user_id, photo_id, click, p_click) for `evaluation`; "
        "default <data_dir>/ground_truth/test_ground_truth.txt when present.",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse to start a step on a dataset that is not in the released layout (the workspace's
        own synthetic default excepted while absent: the `dataset` asset generates it)."""
        root = Path(self.data_dir)
        if not root.exists() and self.generates_here():
            return
        problem = layout.layout_problem(root)
        if problem:
            raise dg.Failure(description=f"workspace: {problem}", allow_retries=False)

    def generates_here(self) -> bool:
        """Whether data_dir is the workspace's synthetic default, <work_dir>/data/<size>: the only
        folder the platform ever generates (the `dataset` asset does, when it is absent)."""
        root = Path(self.data_dir).absolute()
        work = Path(self.work_dir).absolute()
        return root.parent == work / "data" and root.name in _synthetic_sizes()

    def work(self) -> WorkDir:
        return WorkDir(self.work_dir)

    def data_root(self) -> Path:
        """The data root, in the released layout; a missing or malformed folder is a Failure that
        says what to do (nothing is generated here)."""
        root = Path(self.data_dir)
        if not root.exists() and self.generates_here():
            raise dg.Failure(
                description=f"no dataset at {root} yet: materialize `dataset` first (it generates the workspace's "
                f"synthetic '{root.name}' dataset there), or point KUAI_DATA_DIR at a folder in the released layout"
            )
        problem = layout.layout_problem(root)
        if problem:
            raise dg.Failure(description=problem)
        return root

    def ground_truth_path(self) -> Path | None:
        path = Path(self.ground_truth) if self.ground_truth else layout.ground_truth_file(Path(self.data_dir))
        return path if path.is_file() else None


def _synthetic_sizes() -> tuple[str, ...]:
    from kuai_assets.synth.sizes import SIZES

    return tuple(SIZES)


class TrackingResource(dg.ConfigurableResource):
    """The MLflow tracking store: local SQLite under the work dir unless MLFLOW_TRACKING_URI is set."""

    tracking_uri: str = Field(description="MLflow tracking URI. MLFLOW_TRACKING_URI.")
    artifact_root: str = Field(description="Where the experiment keeps its artifacts (models, figures).")
    experiment: str = Field(default=EXPERIMENT, description="The one experiment every run is logged to.")
    ui_url: str = Field(
        default_factory=settings.mlflow_ui_url,
        description="Where the MLflow UI is served; the `mlflow_run` links point there. KUAI_MLFLOW_UI_URL "
        "(`kuai mlflow-ui --port` records it in the workspace).",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse to start a step on an MLflow store that cannot be reached or written, within a
        bounded time (kuai_assets.ml.tracking.probe_store)."""
        try:
            what = probe_store(self.tracking_uri)
        except TrackingError as exc:
            raise dg.Failure(description=f"tracking: {exc}", allow_retries=False) from None
        if context.log:
            context.log.debug(f"tracking: {what}")

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, Path(self.artifact_root), self.experiment)


def default_resources() -> dict:
    from kuai_assets.defs.engine import default_engine_resource

    work = settings.default_work_dir()
    return {
        "engine": default_engine_resource(),
        "workspace": WorkspaceResource(data_dir=str(settings.default_data_dir(work)), work_dir=str(work)),
        "tracking": TrackingResource(
            tracking_uri=settings.default_tracking_uri(work),
            artifact_root=str(work / "mlflow" / "artifacts"),
            ui_url=settings.mlflow_ui_url(work),
        ),
    }
