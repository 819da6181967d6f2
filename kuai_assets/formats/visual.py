"""Reading the released visual vectors: one `[1, 2048]` .npy per photo, zipped or in a folder.

At full scale there are 9.2M of them (75 GB as float32), so they are streamed in chunks and
never held in memory together. For a zip the central directory is parsed once with numpy and the
members are then read in large sequential blocks: stored members are sliced straight out of the
block, deflated ones are inflated one by one.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from kuai_assets.formats.layout import VisualSource
from kuai_assets.formats.released import DataFormatError

NPY_MAGIC = b"\x93NUMPY"
BLOCK_BYTES = 64 << 20
CHUNK_VECTORS = 8192


@dataclass
class VectorChunk:
    photo_id: np.ndarray  # int64
    vectors: np.ndarray  # (n, dim), the file's float dtype


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

    def decode(self, payload: bytes | memoryview, where: str) -> np.ndarray:
        layout = self.layout
        if layout is None or len(payload) != len(layout.header) + layout.dim * layout.dtype.itemsize or bytes(
            payload[: len(layout.header)]
        ) != layout.header:
            found = parse_npy(payload, where)
            if layout is None:
                self.layout = layout = found
            elif found.dim != layout.dim:
                raise DataFormatError(where, f"vector has {found.dim} values, earlier vectors have {layout.dim}")
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


# -- zip archives ----------------------------------------------------------------------------


@dataclass
class ZipIndex:
    names: list[str]
    header_offset: np.ndarray
    compressed_size: np.ndarray
    method: np.ndarray
    end_of_data: int  # where the central directory starts


def read_zip_index(path: Path) -> ZipIndex:
    """Parse a zip's central directory (zip64 included) without building one object per member."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        tail_len = min(size, 65536 + 22 + 20 + 56)
        f.seek(size - tail_len)
        tail = f.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0:
            raise DataFormatError(path, "not a zip archive (no end of central directory record)")
        (_, _, _, _, count, cd_size, cd_offset, _) = struct.unpack_from("<IHHHHIIH", tail, at)
        locator = tail.rfind(b"PK\x06\x07", 0, at)
        if locator >= 0:
            (zip64_end,) = struct.unpack_from("<Q", tail, locator + 8)
            f.seek(zip64_end)
            record = f.read(56)
            if record[:4] != b"PK\x06\x06":
                raise DataFormatError(path, "damaged zip64 end of central directory")
            count, cd_size, cd_offset = struct.unpack_from("<QQQ", record, 32)
        f.seek(cd_offset)
        cd = f.read(cd_size)
    if len(cd) != cd_size:
        raise DataFormatError(path, "the zip's central directory is truncated")

    names: list[str] = []
    offsets = np.empty(count, dtype=np.int64)
    csizes = np.empty(count, dtype=np.int64)
    methods = np.empty(count, dtype=np.int16)
    unpack = struct.Struct("<4s6xH8xIIHHH8xI").unpack_from
    pos = 0
    view = memoryview(cd)
    for i in range(count):
        sig, method, csize, _usize, n_len, x_len, c_len, offset = unpack(cd, pos)
        if sig != b"PK\x01\x02":
            raise DataFormatError(path, f"damaged central directory at entry {i}")
        name_end = pos + 46 + n_len
        if csize == 0xFFFFFFFF or offset == 0xFFFFFFFF or _usize == 0xFFFFFFFF:
            csize, offset = _zip64_sizes(view[name_end : name_end + x_len], csize, _usize, offset)
        names.append(bytes(view[pos + 46 : name_end]).decode("utf-8", "replace"))
        offsets[i], csizes[i], methods[i] = offset, csize, method
        pos = name_end + x_len + c_len
    return ZipIndex(names, offsets, csizes, methods, cd_offset)


def _zip64_sizes(extra: memoryview, csize: int, usize: int, offset: int) -> tuple[int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 1:
            field = pos + 4
            if usize == 0xFFFFFFFF:
                field += 8
            if csize == 0xFFFFFFFF:
                (csize,) = struct.unpack_from("<Q", extra, field)
                field += 8
            if offset == 0xFFFFFFFF:
                (offset,) = struct.unpack_from("<Q", extra, field)
            break
        pos += 4 + length
    return csize, offset


class ZipVectors:
    """The vectors of a zip archive: member index parsed once, then read in sequential blocks."""

    def __init__(self, path: Path):
        self.path = path
        self.index = index = read_zip_index(path)
        keep, photo_ids = [], []
        for i, name in enumerate(index.names):
            photo_id = photo_id_from_name(name, f"{path} member {name!r}")
            if photo_id is not None:
                keep.append(i)
                photo_ids.append(photo_id)
        keep = np.asarray(keep, dtype=np.int64)
        order = np.argsort(index.header_offset[keep], kind="stable")  # read in file order
        self.members = keep[order]
        self.photo_ids = np.asarray(photo_ids, dtype=np.int64)[order]
        # each member's bytes end where the next member (or the central directory) begins
        starts = index.header_offset
        by_offset = np.argsort(starts, kind="stable")
        self.member_end = np.empty_like(starts)
        if len(by_offset):
            self.member_end[by_offset[:-1]] = starts[by_offset[1:]]
            self.member_end[by_offset[-1]] = index.end_of_data

    def __len__(self) -> int:
        return len(self.members)

    def chunks(
        self, chunk_vectors: int = CHUNK_VECTORS, on_progress: Callable[[int, int], None] | None = None
    ) -> Iterator[VectorChunk]:
        index, members, starts = self.index, self.members, self.index.header_offset
        decoder = VectorDecoder()
        total = len(members)
        with open(self.path, "rb") as f:
            i = 0
            while i < total:
                # consecutive members, at most BLOCK_BYTES of them (and at least one), in one read
                block_start = int(starts[members[i]])
                j = i + 1
                while j < total and j - i < chunk_vectors and self.member_end[members[j]] - block_start <= BLOCK_BYTES:
                    j += 1
                block_end = int(self.member_end[members[j - 1]])
                f.seek(block_start)
                block = f.read(block_end - block_start)
                if len(block) != block_end - block_start:
                    raise DataFormatError(self.path, "archive is truncated")
                view = memoryview(block)
                rows = []
                for m in members[i:j]:
                    rel = int(starts[m]) - block_start
                    where = f"{self.path} member {index.names[m]!r}"
                    if view[rel : rel + 4] != b"PK\x03\x04":
                        raise DataFormatError(where, "damaged local header")
                    n_len, x_len = struct.unpack_from("<HH", block, rel + 26)
                    data = rel + 30 + n_len + x_len
                    payload = view[data : data + int(index.compressed_size[m])]
                    if index.method[m] == 8:
                        try:
                            payload = zlib.decompress(payload, -15)
                        except zlib.error as exc:
                            raise DataFormatError(where, f"cannot be inflated ({exc})") from None
                    elif index.method[m] != 0:
                        raise DataFormatError(where, f"unsupported zip compression method {index.method[m]}")
                    rows.append(decoder.decode(payload, where))
                yield VectorChunk(self.photo_ids[i:j], np.stack(rows))
                if on_progress:
                    on_progress(j, total)
                i = j


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
        self, chunk_vectors: int = CHUNK_VECTORS, on_progress: Callable[[int, int], None] | None = None
    ) -> Iterator[VectorChunk]:
        decoder = VectorDecoder()

        def read(name: str) -> bytes:
            with open(self.path / name, "rb") as f:
                return f.read()

        with ThreadPoolExecutor(max_workers=4) as pool:
            for start in range(0, len(self.names), chunk_vectors):
                batch = self.names[start : start + chunk_vectors]
                rows = [decoder.decode(p, str(self.path / n)) for n, p in zip(batch, pool.map(read, batch))]
                yield VectorChunk(self.photo_ids[start : start + len(batch)], np.stack(rows))
                if on_progress:
                    on_progress(start + len(batch), len(self.names))


def open_vectors(source: VisualSource) -> ZipVectors | FolderVectors:
    return ZipVectors(source.path) if source.kind == "zip" else FolderVectors(source.path)
