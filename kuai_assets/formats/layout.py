"""The released folder layout of the Kuaishou 2018 challenge data (see docs/data-format.md).

One place names every file, so the readers and the synthetic generator can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "test")

TRAIN_INTERACTION_COLUMNS = (
    "user_id",
    "photo_id",
    "click",
    "like",
    "follow",
    "time",
    "playing_time",
    "duration_time",
)
TEST_INTERACTION_COLUMNS = ("user_id", "photo_id", "time", "duration_time")

# The final round's visual archive first; the preliminary round used the same shape of names.
VISUAL_PREFIXES = ("final_visual", "preliminary_visual")

GROUND_TRUTH_DIR = "ground_truth"
GROUND_TRUTH_FILE = "test_ground_truth.txt"
GROUND_TRUTH_COLUMNS = ("user_id", "photo_id", "click", "p_click")


def interaction_file(root: Path, split: str) -> Path:
    return Path(root) / split / f"{split}_interaction.txt"


def face_file(root: Path, split: str) -> Path:
    return Path(root) / split / f"{split}_face.txt"


def text_file(root: Path, split: str) -> Path:
    return Path(root) / split / f"{split}_text.txt"


def ground_truth_file(root: Path) -> Path:
    """Kept beside, not inside, the released train/ and test/ folders."""
    return Path(root) / GROUND_TRUTH_DIR / GROUND_TRUTH_FILE


@dataclass(frozen=True)
class VisualSource:
    """Where one split's visual vectors live: a zip of per-photo .npy files, or the unzipped folder."""

    path: Path
    kind: str  # "zip" or "folder"


def find_visual_source(root: Path, split: str) -> VisualSource:
    """Find `final_visual_<split>.zip` (or the unzipped folder, or the preliminary names)."""
    folder = Path(root) / split
    tried = []
    for prefix in VISUAL_PREFIXES:
        zip_path = folder / f"{prefix}_{split}.zip"
        dir_path = folder / f"{prefix}_{split}"
        tried += [zip_path.name, dir_path.name + "/"]
        if zip_path.is_file():
            return VisualSource(zip_path, "zip")
        if dir_path.is_dir():
            return VisualSource(dir_path, "folder")
    raise FileNotFoundError(
        f"No visual vectors for the {split} split in {folder}: looked for {', '.join(tried)}"
    )


def find_visual_source_checked(root: Path, split: str) -> VisualSource:
    """find_visual_source, raising the readers' DataFormatError when nothing is there."""
    from kuai_assets.formats.released import DataFormatError

    try:
        return find_visual_source(root, split)
    except FileNotFoundError as exc:
        raise DataFormatError(Path(root) / split, str(exc)) from None
