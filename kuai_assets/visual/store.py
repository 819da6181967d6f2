"""The consolidated store of every photo's visual vector, and its writer.

The store is a folder: `vectors.npy` (an (N, D) matrix in one of `codec.ENCODINGS`, read
memory-mapped or in blocks), `photo_id.npy` (int64), `split.npy` (int8: `SPLIT_CODES`) and
`meta.json`. Streaming it block by block runs at disk speed; nothing ever holds all N vectors.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from kuai_assets.formats.released import DataFormatError
from kuai_assets.visual.codec import ENCODINGS, decode

if TYPE_CHECKING:
    from kuai_assets.visual.sampling import FitSample
    from kuai_assets.visual.sources import Released

SPLIT_CODES = {"train": 0, "test": 1}
SPLIT_NAMES = np.array(["train", "test"], dtype=object)  # indexed by split code


@dataclass
class VectorStore:
    """A store folder opened for reading: ids and splits in memory, the vectors memory-mapped."""

    path: Path
    photo_id: np.ndarray
    split: np.ndarray
    vectors: np.ndarray  # memory-mapped (N, D), in `encoding`
    meta: dict

    @classmethod
    def open(cls, path: Path) -> "VectorStore":
        path = Path(path)
        return cls(
            path,
            np.load(path / "photo_id.npy"),
            np.load(path / "split.npy"),
            np.load(path / "vectors.npy", mmap_mode="r"),
            json.loads((path / "meta.json").read_text()),
        )

    def __len__(self) -> int:
        return len(self.photo_id)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def encoding(self) -> str:
        return self.meta.get("encoding", "float32")

    def rows(self, index: np.ndarray) -> np.ndarray:
        """float32 vectors of the given row positions."""
        return decode(self.vectors[index], self.encoding)

    def _read_into(self, fd: int, view: memoryview, first_row: int) -> None:
        """Fill `view` with the bytes of the rows from `first_row` on, with plain file reads."""
        row_bytes = self.dim * self.vectors.dtype.itemsize
        at = int(getattr(self.vectors, "offset", 0)) + first_row * row_bytes
        done = 0
        while done < len(view):
            n = os.preadv(fd, [view[done:]], at + done)
            if n <= 0:
                raise OSError(f"{self.path / 'vectors.npy'} ends before row {first_row + done // row_bytes}")
            done += n

    def rows_in_runs(self, sample: "FitSample") -> np.ndarray:
        """float32 vectors of a FitSample's rows, each run read with one plain file read."""
        row_bytes = self.dim * self.vectors.dtype.itemsize
        raw = np.empty((len(sample.positions), self.dim), dtype=self.vectors.dtype)
        view = memoryview(raw).cast("B")
        done = 0
        with open(self.path / "vectors.npy", "rb", buffering=0) as handle:
            for first, last in sample.ranges():
                want = (last - first) * row_bytes
                self._read_into(handle.fileno(), view[done : done + want], first)
                done += want
        return decode(raw, self.encoding)

    def row_blocks(self, rows: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
        """(start, float32 block) in order, each block a new array; the next block is read from
        disk while this one is used.

        Blocks are read with plain file reads, not through the memory map: pages of a mapped file
        that a pass has touched stay in the process's resident set, so one pass over a 20 GB
        store would show as 20 GB of memory.
        """
        starts = list(range(0, len(self), rows))
        handle = open(self.path / "vectors.npy", "rb", buffering=0)

        def load(start: int) -> np.ndarray:
            raw = np.empty((min(rows, len(self) - start), self.dim), dtype=self.vectors.dtype)
            self._read_into(handle.fileno(), memoryview(raw).cast("B"), start)
            return decode(raw, self.encoding)

        with handle, ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(load, starts[0]) if starts else None
            for k, start in enumerate(starts):
                block = pending.result()
                pending = pool.submit(load, starts[k + 1]) if k + 1 < len(starts) else None
                yield start, block


class BackgroundFile:
    """A file written on a second thread, at most two arrays waiting (`write` blocks beyond
    that): the pass does not stop while the page cache flushes the store to disk. Behind the
    writes, the kernel is asked to start writing back what is written (and to drop it from the
    page cache once clean), so that the flush before publishing has little left to do and the
    store does not crowd the cache. The arrays handed to `write` must not change afterwards."""

    WINDOW = 256 << 20
    WAITING = 2

    def __init__(self, path: Path):
        self.handle = open(path, "wb")
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: deque = deque()
        self.written = 0

    def header(self, header: dict) -> None:
        np.lib.format.write_array_header_1_0(self.handle, header)

    def _write(self, array: np.ndarray) -> None:
        array.tofile(self.handle)
        self.handle.flush()
        self.written = self.handle.tell()
        try:
            start = max(0, self.written - self.WINDOW)
            os.posix_fadvise(self.handle.fileno(), start, self.written - start, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError):
            pass

    def write(self, array: np.ndarray) -> None:
        while len(self.pending) >= self.WAITING:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._write, array))

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.handle.close()


class StoreWriter:
    """Writes a store folder (`out`, empty) from chunks given in row order.

    `write` takes each chunk's stored values (in `encoding`, an array nobody changes afterwards)
    and hands it to a BackgroundFile; `close` waits for the writes; `finish` then writes the ids,
    the splits and meta.json and refuses (DataFormatError naming the source files) a photo with
    more than one vector. The caller publishes the folder only if all of it succeeded.
    """

    def __init__(self, out: Path, total: int, encoding: str):
        self.out, self.total, self.encoding = Path(out), total, encoding
        self.file = BackgroundFile(self.out / "vectors.npy")
        self.rows = 0

    def write(self, stored: np.ndarray) -> None:
        if self.rows == 0:
            header = {"descr": ENCODINGS[self.encoding].str, "fortran_order": False, "shape": (self.total, stored.shape[1])}
            self.file.header(header)
        self.file.write(stored)
        self.rows += len(stored)

    def close(self) -> None:
        self.file.close()

    def finish(self, source: "Released", photo_id: np.ndarray, split_code: np.ndarray, elapsed: float) -> dict:
        """The ids, the splits and meta.json (returned) of the vectors written."""
        unique, counts = np.unique(photo_id, return_counts=True)
        if (counts > 1).any():
            repeated = int(unique[np.argmax(counts > 1)])
            splits = sorted({s for s, c in SPLIT_CODES.items() if (split_code[photo_id == repeated] == c).any()})
            raise DataFormatError(
                ", ".join(str(source.sources[s].path) for s in splits),
                "photo has more than one vector" + (" (in both train and test)" if len(splits) > 1 else ""),
                photo_id=repeated,
            )
        np.save(self.out / "photo_id.npy", photo_id)
        np.save(self.out / "split.npy", split_code)
        source_bytes = sum(src.path.stat().st_size for src in source.sources.values() if src.kind == "zip")
        meta = {
            "vectors": int(source.total),
            "dim": int(source.dim),
            "encoding": self.encoding,
            "bytes": int((self.out / "vectors.npy").stat().st_size),
            "sources": {
                s: {"path": str(src.path), "kind": src.kind, "vectors": len(source.readers[s])}
                for s, src in source.sources.items()
            },
            "seconds": round(elapsed, 2),
            "source_megabytes_per_second": round(source_bytes / 1e6 / max(elapsed, 1e-9), 1) if source_bytes else None,
        }
        (self.out / "meta.json").write_text(json.dumps(meta, indent=2))
        return meta
