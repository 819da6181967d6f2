"""Where things are by default: one place, read from the environment.

KUAI_DATA_DIR   the dataset in the released layout (default: the synthetic demo dataset,
                generated on first use under the work dir)
KUAI_WORK_DIR   everything the pipeline writes (default: .kuai/ in the repo)
KUAI_SYNTH_SIZE the size generated when the default dataset is missing (default: demo)
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent


def default_work_dir() -> Path:
    if os.environ.get("KUAI_WORK_DIR"):
        return Path(os.environ["KUAI_WORK_DIR"]).absolute()
    base = REPO_ROOT if (REPO_ROOT / "pyproject.toml").is_file() else Path.cwd()
    return base / ".kuai"


def synthetic_size() -> str:
    return os.environ.get("KUAI_SYNTH_SIZE", "demo")


def synthetic_data_dir(work_dir: Path | None = None) -> Path:
    """The default dataset: synthetic, generated on first use."""
    return Path(work_dir or default_work_dir()) / "data" / synthetic_size()


def default_data_dir() -> Path:
    if os.environ.get("KUAI_DATA_DIR"):
        return Path(os.environ["KUAI_DATA_DIR"]).absolute()
    return synthetic_data_dir()
