"""The released folder layout of the Kuaishou 2018 challenge data (see docs/data-format.md).

One place names every file, so the readers and the synthetic generator can never disagree.
"""

from __future__ import annotations

import hashlib
import os
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


def layout_problem(root: Path) -> str | None:
    """What keeps `root` from being a dataset in the released layout, in one line; None if it is one.

    Checks that the folder, each split's interaction, face and cover-text files and its visual
    vectors (zip or folder) exist; reading them is the readers' job.
    """
    root = Path(root)
    if not root.exists():
        return (
            f"no dataset at {root}: point KUAI_DATA_DIR (or `kuai run --data`, or the workspace "
            "resource's data_dir) at a folder in the released layout, with train/ and test/ inside"
        )
    if not root.is_dir():
        return f"{root} is not a folder: a dataset in the released layout is a folder with train/ and test/ inside"
    missing = [
        str(path.relative_to(root))
        for split in SPLITS
        for path in (interaction_file(root, split), face_file(root, split), text_file(root, split))
        if not path.is_file()
    ]
    for split in SPLITS:
        try:
            find_visual_source(root, split)
        except FileNotFoundError:
            missing.append(f"{split}/final_visual_{split}.zip (or the folder, or the preliminary name)")
    if missing:
        return f"{root} is not a dataset in the released layout: missing {', '.join(missing)}"
    return None


@dataclass(frozen=True)
class Fingerprint:
    sizes: dict[str, int]  # path under the root -> bytes (0 for a folder of vectors)
    digest: str  # changes when any entry of train/ or test/ is replaced, resized, added or removed


def fingerprint(root: Path) -> Fingerprint:
    """The identity of a dataset's released files, cheap at any size: the name, size and
    modification time of each entry of train/ and test/ (a folder of per-photo vectors counts by
    its own modification time, which adding or removing a member changes, so that no member is
    read or listed). ground_truth/ is not part of it: only `evaluation` reads that."""
    root = Path(root)
    sizes: dict[str, int] = {}
    stamps = []
    for split in SPLITS:
        for entry in sorted(os.scandir(root / split), key=lambda e: e.name):
            stat = entry.stat()
            name = f"{split}/{entry.name}"
            sizes[name] = 0 if entry.is_dir() else stat.st_size
            stamps.append(f"{name}\t{sizes[name]}\t{stat.st_mtime_ns}")
    return Fingerprint(sizes, hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16])

