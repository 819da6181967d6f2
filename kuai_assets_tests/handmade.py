"""A dataset in the released layout written with nothing but the standard library and numpy,
independently of kuai_assets.synth: a different generator, so tests see the readers and the
pipeline work on files they were not tuned to."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np


def npy_bytes(vector: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, vector)
    return buf.getvalue()


def write_dataset(
    root: Path,
    n_users: int = 40,
    n_train_photos: int = 900,
    n_test_photos: int = 250,
    rows_per_user: int = 120,
    dim: int = 32,
    visual: str = "zip",  # zip | folder
    prefix: str = "final_visual",
    compression: int = zipfile.ZIP_DEFLATED,
    seed: int = 0,
) -> Path:
    """Users like one of four 'styles'; a photo's style shows in its vector. Batches of 1-3."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
    users = np.arange(500, 500 + n_users) * 3
    liked_style = rng.integers(0, 4, n_users)
    style_dirs = rng.normal(size=(4, dim)) * 2
    photos = {
        "train": np.arange(10, 10 + n_train_photos),
        "test": np.arange(100_000, 100_000 + n_test_photos),
    }
    styles = {s: rng.integers(0, 4, len(p)) for s, p in photos.items()}
    start = {"train": 760_000_000_000, "test": 760_000_000_000 + 36 * 3_600_000}
    hours = {"train": 36, "test": 12}
    for split in ("train", "test"):
        lines, truth = [], []
        for u, user in enumerate(users):
            n = rows_per_user if split == "train" else rows_per_user // 3
            chosen = rng.choice(len(photos[split]), size=n, replace=False)
            t = start[split] + np.sort(rng.integers(0, hours[split] * 3_600_000, size=n))
            t[1::3] = t[0::3][: len(t[1::3])]  # every few rows share a timestamp: a batch
            t = np.sort(t)
            for p_index, time in zip(chosen, t):
                photo = photos[split][p_index]
                p = 0.35 if styles[split][p_index] == liked_style[u] else 0.1
                click = int(rng.random() < p)
                duration = int(rng.integers(0, 60))
                if split == "train":
                    playing = int(rng.integers(1, duration + 2)) if click else 0
                    lines.append(f"{user}\t{photo}\t{click}\t0\t0\t{time}\t{playing}\t{duration}")
                else:
                    lines.append(f"{user}\t{photo}\t{time}\t{duration}")
                    truth.append(f"{user}\t{photo}\t{click}\t{p:.6f}")
        (root / split / f"{split}_interaction.txt").write_text("\n".join(lines) + "\n")
        if split == "test":
            (root / "ground_truth").mkdir()
            (root / "ground_truth" / "test_ground_truth.txt").write_text("\n".join(truth) + "\n")
        faces, texts = [], []
        for photo, style in zip(photos[split], styles[split]):
            if photo % 3 == 0:
                faces.append(f"{photo}\t[[0.{10 + style}, {style % 2}, {20 + style}, {50 + style}]]")
            texts.append(f"{photo}\t{style},{photo % 7}" if photo % 2 else f"{photo}\t0")
        (root / split / f"{split}_face.txt").write_text("\n".join(faces) + "\n")
        (root / split / f"{split}_text.txt").write_text("\n".join(texts) + "\n")
        vectors = {
            int(photo): (style_dirs[style] + rng.normal(size=dim)).astype(np.float32)[None, :]
            for photo, style in zip(photos[split], styles[split])
        }
        name = f"{prefix}_{split}"
        if visual == "zip":
            with zipfile.ZipFile(root / split / f"{name}.zip", "w", compression) as z:
                for photo, vector in vectors.items():
                    z.writestr(f"{name}/{photo}", npy_bytes(vector))
        else:
            (root / split / name).mkdir()
            for photo, vector in vectors.items():
                (root / split / name / str(photo)).write_bytes(npy_bytes(vector))
    return root
