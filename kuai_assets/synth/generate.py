"""Write a synthetic dataset in exactly the released layout, plus a ground truth kept apart.

    python -m kuai_assets.synth --size demo --seed 7 --out data/demo

The dataset is written to a temporary folder beside `out` and renamed into place at the end, so
an interrupted generation never leaves something that looks like a complete dataset.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import shutil
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from kuai_assets.formats import layout
from kuai_assets.ml.metrics import roc_auc
from kuai_assets.synth.impressions import ExposureSampler, Period, generate_block
from kuai_assets.synth.sizes import SizeSpec, get_size
from kuai_assets.synth.zipwriter import StoredZipWriter
from kuai_assets.synth.world import (
    BASE_TIME_MS,
    POPULARITY_SIGMA,
    TEST_HOURS,
    TRAIN_HOURS,
    Photos,
    World,
    add_photo_detail,
    apply_world,
    get_world,
    make_photos,
    make_topics,
    make_users,
    pool_size_for,
    visual_vectors,
)

log = logging.getLogger(__name__)

GENERATOR_VERSION = "2"  # 2: named worlds (the demo world draws what version 1 drew)
TSV = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")


def generate_if_absent(out: Path, size: str, say: Callable[[str], None] = lambda m: None) -> dict | None:
    """Generate the synthetic `size` dataset at `out` unless a folder is already there.

    Returns the new dataset's summary, or None when `out` existed (or another process finished
    writing it meanwhile: generation publishes the folder atomically, so a reader never sees half).
    `say` hears one line before and one after, since generating the demo takes minutes.
    """
    out = Path(out)
    if out.exists():
        return None
    say(f"no dataset at {out}: generating the synthetic '{size}' dataset there (once) ...")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        summary = generate(out, get_size(size))
    except FileExistsError:
        return None
    say(f"generated in {summary['seconds']:.0f}s (oracle AUC {summary['oracle_auc']:.4f})")
    return summary


def generate(
    out: Path,
    spec: SizeSpec,
    seed: int = 7,
    visual_format: str = "zip",
    zip_compression: str = "stored",
    visual_prefix: str = "final_visual",
    world: str | World = "demo",
) -> dict:
    """Generate a dataset at `out`. Returns the summary also written to ground_truth/summary.json.

    `world` names the generative story (`world.WORLDS`; an unknown name is refused, listing the
    choices); the default `demo` writes exactly what the generator wrote before worlds existed.
    """
    world = get_world(world) if isinstance(world, str) else world
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another --out")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    started = time.time()
    try:
        summary = _generate_into(tmp, spec, seed, visual_format, zip_compression, visual_prefix, world)
        summary["seconds"] = round(time.time() - started, 1)
        (tmp / layout.GROUND_TRUTH_DIR / "summary.json").write_text(json.dumps(summary, indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _generate_into(
    root: Path,
    spec: SizeSpec,
    seed: int,
    visual_format: str,
    zip_compression: str,
    visual_prefix: str,
    world: World,
) -> dict:
    for split in layout.SPLITS:
        (root / split).mkdir(parents=True)
    (root / layout.GROUND_TRUTH_DIR).mkdir()
    # streams 0-5 are the demo story's; 6 and 7 only the other worlds' mechanisms draw from
    # (spawning more children leaves the first six unchanged)
    seeds = np.random.SeedSequence(seed).spawn(8)
    world_rng = np.random.default_rng(seeds[0])
    extras_rng = np.random.default_rng(seeds[6])

    topics = make_topics(spec, world_rng)
    users = make_users(spec, world_rng)
    apply_world(world, topics, users, extras_rng)
    train_pool = pool_size_for(spec.n_train_photos, spec.n_train_rows, POPULARITY_SIGMA, world_rng)
    test_pool = pool_size_for(spec.n_test_photos, spec.n_test_rows, POPULARITY_SIGMA, world_rng)
    train_photos = make_photos(
        spec, topics, train_pool, 1_000, (-12.0, TRAIN_HOURS), world_rng, POPULARITY_SIGMA
    )
    test_photos = make_photos(
        spec,
        topics,
        test_pool,
        int(train_photos.photo_id[-1]) + 1,
        (TRAIN_HOURS - 2.0, TRAIN_HOURS + TEST_HOURS - 1.0),
        world_rng,
        POPULARITY_SIGMA,
    )
    add_photo_detail(world, train_photos, extras_rng)
    add_photo_detail(world, test_photos, extras_rng)
    periods = {
        "train": (Period("train", 0.0, TRAIN_HOURS), train_photos),
        "test": (Period("test", TRAIN_HOURS, TRAIN_HOURS + TEST_HOURS), test_photos),
    }

    intercept = None
    mechanism_rng = np.random.default_rng(seeds[7])
    counts: dict[str, dict] = {}
    truth_p, truth_click = [], []
    for split, (period, photos) in periods.items():
        sampler = ExposureSampler(photos, period, spec.n_topics)
        shown = np.zeros(len(photos), dtype=bool)
        rng = np.random.default_rng(seeds[1 if split == "train" else 2])
        totals = dict(rows=0, clicks=0, likes=0, follows=0)
        with _tsv_writer(layout.interaction_file(root, split), split) as write, _tsv_writer(
            layout.ground_truth_file(root), "truth"
        ) if split == "test" else _null() as write_truth:
            for start in range(0, len(users), spec.users_per_block):
                block_users = np.arange(start, min(start + spec.users_per_block, len(users)))
                block, intercept = generate_block(
                    users, block_users, photos, sampler, period, rng, BASE_TIME_MS, intercept, world, mechanism_rng
                )
                shown[block.photo_index] = True
                write(_interaction_table(block, split))
                totals["rows"] += len(block.click)
                totals["clicks"] += int(block.click.sum())
                totals["likes"] += int(block.like.sum())
                totals["follows"] += int(block.follow.sum())
                if split == "test":
                    write_truth(_truth_table(block))
                    truth_p.append(block.p_click)
                    truth_click.append(block.click)
                log.info("%s: %d of %d users written", split, block_users[-1] + 1, len(users))
        shown_index = np.flatnonzero(shown)  # photo ids increase with the pool index
        photo_rng = np.random.default_rng(seeds[3 if split == "train" else 4])
        faces = _write_faces(layout.face_file(root, split), photos, shown_index)
        texts = _write_texts(layout.text_file(root, split), photos, shown_index)
        _write_visual(
            root / split, split, topics, photos, shown_index, photo_rng, visual_format, zip_compression, visual_prefix
        )
        counts[split] = dict(
            totals,
            photos=int(len(shown_index)),
            photos_with_faces=faces,
            photos_with_text=texts,
            candidate_photos=len(photos),
        )

    p = np.concatenate(truth_p)
    clicked = np.concatenate(truth_click)
    return dict(
        generator="kuai_assets.synth",
        generator_version=GENERATOR_VERSION,
        size=spec.name,
        seed=seed,
        world=world.name,
        world_switches=world.switches(),
        spec=asdict(spec),
        users=len(users),
        intercept=intercept,
        counts=counts,
        train_click_rate=counts["train"]["clicks"] / counts["train"]["rows"],
        test_click_rate=float(clicked.mean()),
        oracle_auc=roc_auc(clicked, p),
    )


class _null:
    def __enter__(self):
        return lambda table: None

    def __exit__(self, *exc):
        return False


class _tsv_writer:
    """Append Arrow tables to a headerless tab-separated file."""

    SCHEMAS = {
        "train": pa.schema([(c, pa.int64()) for c in layout.TRAIN_INTERACTION_COLUMNS]),
        "test": pa.schema([(c, pa.int64()) for c in layout.TEST_INTERACTION_COLUMNS]),
        "truth": pa.schema(
            [("user_id", pa.int64()), ("photo_id", pa.int64()), ("click", pa.int64()), ("p_click", pa.string())]
        ),
    }

    def __init__(self, path: Path, kind: str):
        self.path, self.kind = path, kind

    def __enter__(self):
        self.writer = pacsv.CSVWriter(str(self.path), self.SCHEMAS[self.kind], write_options=TSV)
        return self.writer.write_table

    def __exit__(self, *exc):
        self.writer.close()
        return False


def _interaction_table(block, split: str) -> pa.Table:
    columns = layout.TRAIN_INTERACTION_COLUMNS if split == "train" else layout.TEST_INTERACTION_COLUMNS
    return pa.table({c: pa.array(getattr(block, c).astype(np.int64)) for c in columns})


def _truth_table(block) -> pa.Table:
    p = pa.array(np.round(block.p_click, 6))
    return pa.table(
        {
            "user_id": pa.array(block.user_id.astype(np.int64)),
            "photo_id": pa.array(block.photo_id.astype(np.int64)),
            "click": pa.array(block.click.astype(np.int64)),
            "p_click": pc.utf8_slice_codeunits(pc.cast(p, pa.string()), 0, 8),
        }
    )


def _grouped_join(owner: np.ndarray, items: pa.Array, selected: np.ndarray, n_photos: int, sep: str) -> pa.Array:
    """Join the `items` of each selected photo into one string (`owner` is sorted by photo)."""
    starts = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=n_photos))])
    lengths = starts[selected + 1] - starts[selected]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    take = np.repeat(starts[selected], lengths) + within
    lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), items.take(pa.array(take)))
    return pc.binary_join(lists, sep)


def _write_faces(path: Path, photos: Photos, shown_index: np.ndarray) -> int:
    """`photo_id \\t [[share, gender, age, appearance], ...]`, only for photos with a face."""
    with_face = shown_index[photos.n_faces[shown_index] > 0]
    face = pc.binary_join_element_wise(
        pc.utf8_slice_codeunits(pc.cast(pa.array(np.round(photos.face_share, 2)), pa.string()), 0, 4),
        pc.cast(pa.array(photos.face_gender), pa.string()),
        pc.cast(pa.array(photos.face_age), pa.string()),
        pc.cast(pa.array(photos.face_appearance), pa.string()),
        ", ",
    )
    face = pc.binary_join_element_wise("[", face, "]", "")
    joined = _grouped_join(photos.face_photo, face, with_face, len(photos), ", ")
    table = pa.table(
        {
            "photo_id": pa.array(photos.photo_id[with_face]),
            "faces": pc.binary_join_element_wise("[", joined, "]", ""),
        }
    )
    pacsv.write_csv(table, str(path), write_options=TSV)
    return len(with_face)


def _write_texts(path: Path, photos: Photos, shown_index: np.ndarray) -> int:
    """`photo_id \\t w1,w2,...`, and the single token 0 for a cover without text. Every photo has a row."""
    words = pc.cast(pa.array(photos.word_id), pa.string())
    joined = _grouped_join(photos.word_photo, words, shown_index, len(photos), ",")
    has_text = photos.has_text[shown_index]
    table = pa.table(
        {
            "photo_id": pa.array(photos.photo_id[shown_index]),
            "words": pc.if_else(pa.array(has_text), joined, pa.scalar("0")),
        }
    )
    pacsv.write_csv(table, str(path), write_options=TSV)
    return int(has_text.sum())


def npy_header(dim: int, dtype=np.float32) -> bytes:
    """The .npy header of a [1, dim] array: the same for every photo, so built once."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((1, dim), dtype=dtype))
    return buf.getvalue()[: -dim * np.dtype(dtype).itemsize]


def _write_visual(
    folder: Path,
    split: str,
    topics,
    photos: Photos,
    shown_index: np.ndarray,
    rng: np.random.Generator,
    visual_format: str,
    zip_compression: str,
    visual_prefix: str,
    chunk: int = 16_384,
) -> None:
    """One [1, D] float32 .npy per photo, named by the bare photo_id: zipped (as released) or a folder."""
    member_dir = f"{visual_prefix}_{split}"
    header = npy_header(topics.projection.shape[1])
    stored = deflated = None
    if visual_format == "zip" and zip_compression == "stored":
        stored = StoredZipWriter(folder / f"{member_dir}.zip")
    elif visual_format == "zip" and zip_compression == "deflated":
        deflated = zipfile.ZipFile(folder / f"{member_dir}.zip", "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
    elif visual_format == "folder":
        (folder / member_dir).mkdir()
    else:
        raise ValueError(f"visual_format must be zip or folder and compression stored or deflated")
    try:
        for start in range(0, len(shown_index), chunk):
            index = shown_index[start : start + chunk]
            vectors = visual_vectors(topics, photos, index, rng)
            flat = memoryview(np.ascontiguousarray(vectors)).cast("B")
            width = vectors.shape[1] * vectors.itemsize
            rows = [flat[k * width : (k + 1) * width] for k in range(len(index))]
            names = [f"{member_dir}/{photo_id}" for photo_id in photos.photo_id[index].tolist()]
            if stored is not None:
                stored.add(zip((n.encode() for n in names), itertools.repeat(header), rows))
            elif deflated is not None:
                for name, row in zip(names, rows):
                    info = zipfile.ZipInfo(name, date_time=(2018, 6, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    deflated.writestr(info, header + bytes(row))
            else:
                for name, row in zip(names, rows):
                    (folder / name).write_bytes(header + bytes(row))
    finally:
        for archive in (stored, deflated):
            if archive is not None:
                archive.close()
