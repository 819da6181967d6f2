"""The rows the PCA and the KMeans are fitted on, and reading their vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from kuai_assets.visual.sources import Released
    from kuai_assets.visual.store import VectorStore


@dataclass
class FitSample:
    """The fitting rows: runs of `run_length` consecutive rows, the runs drawn at random.

    Reading runs rather than single rows turns ~50,000 random reads into ~1,600 short sequential
    ones. The runs come in a random order and every fit takes the rows of the first runs it needs
    (`first`), so the PCA's rows do not depend on the ks and a smaller fit's rows are part of a
    larger one's. The same (total, largest, seed, run_length) always draws the same rows.
    """

    positions: np.ndarray  # sorted row positions of every chosen run
    run_rank: np.ndarray  # per position: its run's place in the random order
    run_length: int

    @classmethod
    def draw(cls, total: int, largest: int, seed: int, run_length: int) -> "FitSample":
        """Enough whole runs of the `total` rows for `largest` rows (every row if that is more)."""
        n_runs = -(-total // run_length)
        order = np.random.default_rng(seed).permutation(n_runs)
        chosen = np.sort(order[: min(n_runs, -(-largest // run_length))])
        rank = np.empty(n_runs, dtype=np.int64)
        rank[order] = np.arange(n_runs)
        starts = chosen * run_length
        ends = np.minimum(starts + run_length, total)
        lengths = ends - starts
        positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
        return cls(positions, np.repeat(rank[chosen], lengths), run_length)

    def first(self, n: int) -> np.ndarray:
        """Which of `positions` belong to the first runs holding about n rows (a mask)."""
        return self.run_rank < -(-n // self.run_length)

    def ranges(self, offset: int = 0, length: int | None = None) -> list[tuple[int, int]]:
        """The positions as sorted [i, j) ranges, shifted by -offset and kept within [0, length)."""
        if len(self.positions) == 0:
            return []
        breaks = np.flatnonzero(np.diff(self.positions) != 1) + 1
        firsts = self.positions[np.concatenate([[0], breaks])] - offset
        lasts = self.positions[np.concatenate([breaks - 1, [len(self.positions) - 1]])] + 1 - offset
        limit = length if length is not None else int(lasts[-1])
        firsts, lasts = np.clip(firsts, 0, limit), np.clip(lasts, 0, limit)
        return [(int(a), int(b)) for a, b in zip(firsts, lasts) if b > a]


def read_sample(source: "Released | VectorStore", sample: FitSample, encoding: str) -> np.ndarray:
    """The sample's vectors as float32 (len(sample.positions) rows, in position order), rounded
    as a store in `encoding` keeps them: from the released files (checked as the pass checks
    them), or from a store (which keeps its own encoding)."""
    from kuai_assets.visual.sources import Released

    if isinstance(source, Released):
        # each chunk copied into one array as it comes: no list of chunks beside their concatenation
        # (which would hold the sample twice, and every chunk's stored values, at once)
        vectors, done = None, 0
        for _, chunk in source.chunks(sample, encoding):
            if vectors is None:
                vectors = np.empty((len(sample.positions), chunk.vectors.shape[1]), dtype=np.float32)
            vectors[done : done + len(chunk.vectors)] = chunk.vectors
            done += len(chunk.vectors)
        if vectors is None or done != len(vectors):
            raise ValueError(f"the fitting sample has {len(sample.positions):,} rows but {done:,} were read")
        return vectors
    return source.rows_in_runs(sample)
