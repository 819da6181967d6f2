"""Reading the released visual vectors: one `[1, 2048]` .npy per photo, zipped or in a folder.

At full scale there are 9.2M of them (75 GB as float32), so they are streamed in chunks and
never held in memory together. Zips are read by `visual_zip` (at disk speed); this module holds
what both forms share: decoding and checking one .npy payload, photo_ids from member names, and
the unzipped-folder reader.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from kuai_assets.formats.layout import VisualSource
from kuai_assets.formats.released import DataFormatError

NPY_MAGIC = b"\x93NUMPY"
CHUNK_VECTORS = 8192


@dataclass
class VectorChunk:
    photo_id: np.ndarray  # int64
    vectors: np.ndarray  # (n, dim), the file's float dtype
    stored: np.ndarray | None = None  # the same vectors in a store's encoding, when a reader made them
    reduced: np.ndarray | None = None  # their projection on the PCA axes, when a reader made it


# -- .npy payloads ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NpyLayout:
    header: bytes  # every byte before the data
    dtype: np.dtype
    dim: int


def parse_npy(payload: bytes | memoryview, where: str) -> NpyLayout:
    """Check a payload is a .npy holding one float vector ([1, D] or [D]); return its layout."""
    if bytes(payload[:6]) != NPY_MAGIC:
        raise DataFormatError(where, "not a numpy .npy array (bad magic bytes)")
    stream = io.BytesIO(bytes(payload[: min(len(payload), 65536 + 10)]))
    try:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran_order, dtype = read_header(stream)
    except Exception as exc:  # numpy raises ValueError/OSError variants for damaged headers
        raise DataFormatError(where, f"not a readable numpy .npy array ({exc})") from None
    if dtype.kind != "f":
        raise DataFormatError(where, f"vector dtype must be floating point, got {dtype}")
    if not (len(shape) == 2 and shape[0] == 1) and len(shape) != 1:
        raise DataFormatError(where, f"vector shape must be [1, D], got {list(shape)}")
    dim = int(shape[-1])
    header_len = stream.tell()
    expected = header_len + dim * dtype.itemsize
    if len(payload) != expected:
        raise DataFormatError(where, f"file holds {len(payload)} bytes, a [1, {dim}] {dtype} array needs {expected}")
    return NpyLayout(bytes(payload[:header_len]), dtype, dim)


class VectorDecoder:
    """Decodes payloads sharing one header fast; anything different is parsed and checked alone."""

    def __init__(self):
        self.layout: NpyLayout | None = None
        self.first: str | None = None  # where the layout came from, when decode() set it

    def decode(self, payload: bytes | memoryview, where: str) -> np.ndarray:
        layout = self.layout
        if layout is None or len(payload) != len(layout.header) + layout.dim * layout.dtype.itemsize or bytes(
            payload[: len(layout.header)]
        ) != layout.header:
            found = parse_npy(payload, where)
            if layout is None:
                self.layout = layout = found
                self.first = where
            elif found.dim != layout.dim:
                first = f" ({self.first})" if self.first else ""
                raise DataFormatError(
                    where,
                    f"vector has {found.dim} values, but the first vector read{first} has {layout.dim}; "
                    "every vector must have the same length (2048 as released)",
                )
            return np.frombuffer(payload, found.dtype, count=found.dim, offset=len(found.header))
        return np.frombuffer(payload, layout.dtype, count=layout.dim, offset=len(layout.header))


def photo_id_from_name(name: str, where: str) -> int | None:
    """`final_visual_train/123` -> 123 (any folder prefix). None for entries to skip (folders, OS junk)."""
    if name.endswith("/"):
        return None
    base = name.rsplit("/", 1)[-1]
    if name.startswith("__MACOSX/") or base.startswith("."):
        return None
    if base.endswith(".npy"):
        base = base[:-4]
    if not base.isdigit():
        raise DataFormatError(where, f"member {name!r} is not named by a bare photo_id")
    return int(base)


class FolderVectors:
    """The vectors of an unzipped folder of files named by bare photo_id."""

    def __init__(self, path: Path):
        self.path = path
        names, photo_ids = [], []
        with os.scandir(path) as entries:
            for entry in entries:
                if not entry.is_file():
                    continue
                photo_id = photo_id_from_name(entry.name, f"{path / entry.name}")
                if photo_id is not None:
                    names.append(entry.name)
                    photo_ids.append(photo_id)
        order = np.argsort(photo_ids, kind="stable")
        self.photo_ids = np.asarray(photo_ids, dtype=np.int64)[order]
        self.names = [names[k] for k in order]

    def __len__(self) -> int:
        return len(self.names)

    def chunks(
        self,
        chunk_vectors: int = CHUNK_VECTORS,
        on_progress: Callable[[int, int], None] | None = None,
        reuse_after: int | None = None,
        ranges: list[tuple[int, int]] | None = None,
        prepare: Callable[[VectorChunk], object] | None = None,
    ) -> Iterator:
        """Vectors in photo_id order; with `ranges` (sorted, disjoint [i, j) positions) only those.
        Every chunk gets a new array (`reuse_after` is accepted for `ZipVectors.chunks`' sake);
        with `prepare`, what it returns for each chunk is yielded instead."""
        decoder = VectorDecoder()

        def read(name: str) -> bytes:
            with open(self.path / name, "rb") as f:
                return f.read()

        with ThreadPoolExecutor(max_workers=4) as pool:
            for first, last in ranges if ranges is not None else [(0, len(self.names))]:
                for start in range(first, last, chunk_vectors):
                    batch = self.names[start : min(start + chunk_vectors, last)]
                    rows = [decoder.decode(p, str(self.path / n)) for n, p in zip(batch, pool.map(read, batch))]
                    chunk = VectorChunk(self.photo_ids[start : start + len(batch)], np.stack(rows))
                    yield chunk if prepare is None else prepare(chunk)
                    if on_progress:
                        on_progress(start + len(batch), len(self.names))


def open_vectors(source: VisualSource):
    """A ZipVectors or FolderVectors: `len()`, `.photo_ids`, and `.chunks()` of VectorChunk."""
    if source.kind == "zip":
        from kuai_assets.formats.visual_zip import ZipVectors

        return ZipVectors(source.path)
    return FolderVectors(source.path)
