"""Resources: where the data is and where outputs go, and the MLflow tracking store.

Both are editable in the Launchpad (resource config); their defaults come from the environment
(see kuai_assets/settings.py).
"""


import logging
from pathlib import Path

import dagster as dg
from pydantic import Field

from kuai_assets import settings
from kuai_assets.formats import layout
from kuai_assets.ml.tracking import EXPERIMENT, Tracker, default_tracking_uri
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

    def work(self) -> WorkDir:
        return WorkDir(self.work_dir)

    def dataset(self, log: logging.Logger | None = None) -> Path:
        """The data root; the synthetic default is generated here on first use."""
        root = Path(self.data_dir)
        synthetic = settings.synthetic_data_dir(Path(self.work_dir))
        if not root.exists() and root.absolute() == synthetic.absolute():
            from kuai_assets.synth import generate, get_size

            size = settings.synthetic_size()
            if log:
                log.info(f"No dataset at {root}: generating the synthetic '{size}' dataset there (once).")
            root.parent.mkdir(parents=True, exist_ok=True)
            try:
                generate(root, get_size(size))
            except FileExistsError:
                pass  # another run generated it meanwhile
        if not root.is_dir():
            raise dg.Failure(
                description=f"No dataset at {root}. Point KUAI_DATA_DIR (or this resource's data_dir) "
                "at a folder in the released layout, with train/ and test/ inside."
            )
        return root

    def ground_truth_path(self) -> Path | None:
        path = Path(self.ground_truth) if self.ground_truth else layout.ground_truth_file(Path(self.data_dir))
        return path if path.is_file() else None


class TrackingResource(dg.ConfigurableResource):
    """The MLflow tracking store: local SQLite under the work dir unless MLFLOW_TRACKING_URI is set."""

    tracking_uri: str = Field(description="MLflow tracking URI. MLFLOW_TRACKING_URI.")
    artifact_root: str = Field(description="Where the experiment keeps its artifacts (models, figures).")
    experiment: str = Field(default=EXPERIMENT, description="The one experiment every run is logged to.")
    ui_url: str = Field(default="http://127.0.0.1:5000", description="Where `kuai mlflow-ui` serves the MLflow UI.")

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, Path(self.artifact_root), self.experiment)


def default_resources() -> dict:
    from kuai_assets.defs.engine import default_engine_resource

    work = settings.default_work_dir()
    return {
        "engine": default_engine_resource(),
        "workspace": WorkspaceResource(data_dir=str(settings.default_data_dir()), work_dir=str(work)),
        "tracking": TrackingResource(
            tracking_uri=default_tracking_uri(work), artifact_root=str(work / "mlflow" / "artifacts")
        ),
    }
