"""The released vectors of every split (zips or unzipped folders) as one sequence of chunks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from kuai_assets.formats.layout import VisualSource
from kuai_assets.formats.released import DataFormatError
from kuai_assets.formats.visual import CHUNK_VECTORS, VectorChunk, open_vectors
from kuai_assets.visual import codec

if TYPE_CHECKING:
    from kuai_assets.visual.sampling import FitSample

# on a read thread: a chunk's float32 values -> their reduced vectors, or None if it cannot yet
EarlyProjection = Callable[[np.ndarray], "np.ndarray | None"]


class CheckAndRound:
    """What each read thread does to the chunk it decoded: refuse bad values (naming the file and
    the photo), round to the store's encoding and, when `project` can, project the rounded values.

    Produces a VectorChunk with `stored` (the values as the store keeps them: never the reader's
    buffer), `vectors` (the same values as float32: may be the reader's buffer) and `reduced`
    (the projection, or None)."""

    def __init__(self, where: Path, encoding: str, project: EarlyProjection | None):
        self.where, self.encoding, self.project = where, encoding, project

    def __call__(self, chunk: VectorChunk) -> VectorChunk:
        codec.check_vectors(chunk.vectors, chunk.photo_id, self.where, self.encoding)
        stored, values = codec.round_to_encoding(chunk.vectors, self.encoding)
        codec.check_rounded(stored, chunk.photo_id, self.where, self.encoding)
        if np.may_share_memory(stored, values):  # float32: the stored array must not be the buffer
            stored = stored.copy()
        return VectorChunk(chunk.photo_id, values, stored, None if self.project is None else self.project(values))


class Released:
    """The released vectors of every split, read in order (train, then test) as one sequence.

    Opening parses every split's index (refusing an empty source); `total` is the number of
    vectors of all splits, `dim` their length once the first chunk is read.
    """

    # a caller of `chunks` holds at most this many chunks at once: the one it was given and the
    # one before; after that the readers reuse the chunk's `vectors` array
    HELD = 2

    def __init__(self, sources: dict[str, VisualSource]):
        self.sources = sources
        with ThreadPoolExecutor(max_workers=len(sources) or 1) as pool:  # each zip's index parsed at once
            opened = {split: pool.submit(open_vectors, source) for split, source in sources.items()}
            self.readers = {split: reader.result() for split, reader in opened.items()}
        self.total = sum(len(r) for r in self.readers.values())
        if self.total == 0:
            raise DataFormatError(next(iter(sources.values())).path, "no vectors found")
        self.dim: int | None = None

    def chunks(
        self,
        sample: "FitSample | None" = None,
        encoding: str = "bfloat16",
        rows: int = CHUNK_VECTORS,
        project: EarlyProjection | None = None,
    ) -> Iterator[tuple[str, VectorChunk]]:
        """(split, chunk) in order, at most `rows` vectors each; with `sample`, only its rows.

        Each chunk went through CheckAndRound on the read thread that decoded it, so the read
        threads share that work. Without `sample`, a chunk's `vectors` array is reused once the
        caller has taken HELD more chunks; `stored` and `reduced` are always its own. Refuses
        (DataFormatError) a split whose vectors have another length than the split before.
        """
        offset = 0
        for split, reader in self.readers.items():
            where = self.sources[split].path
            ranges = None if sample is None else sample.ranges(offset, len(reader))
            offset += len(reader)
            if ranges == []:
                continue
            reuse = self.HELD if sample is None else None
            prepare = CheckAndRound(where, encoding, project)
            for chunk in reader.chunks(rows, reuse_after=reuse, ranges=ranges, prepare=prepare):
                if self.dim is None:
                    self.dim = chunk.vectors.shape[1]
                elif chunk.vectors.shape[1] != self.dim:
                    raise DataFormatError(
                        where,
                        f"vectors have {chunk.vectors.shape[1]} values, those read before (the other split) have {self.dim}",
                        photo_id=int(chunk.photo_id[0]),
                    )
                yield split, chunk
