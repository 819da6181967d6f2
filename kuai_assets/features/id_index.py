"""Positions of integer ids (photo_id, user_id) in a sorted array of distinct ids."""

from __future__ import annotations

import numpy as np


class IdIndex:
    """Positions of ids in a sorted array of distinct ids.

    Ids that are dense enough (as the released ones are) go through a lookup table, one memory
    read per id; sparse ids (hashes, say) through a binary search. On 50 million random lookups
    into 5 million photos the table is tens of times faster.
    """

    def __init__(self, sorted_ids: np.ndarray):
        self.sorted_ids = sorted_ids
        self.table = None
        if len(sorted_ids) and sorted_ids[0] >= 0 and sorted_ids[-1] < 4 * len(sorted_ids) + 1_000_000:
            self.table = np.full(int(sorted_ids[-1]) + 1, -1, dtype=np.int64)
            self.table[sorted_ids] = np.arange(len(sorted_ids))

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, found); the position is meaningless where not found."""
        if not len(self.sorted_ids):
            return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
        if self.table is not None:
            if len(ids) and ids.min() >= 0 and ids.max() < len(self.table):
                pos = self.table[ids]  # every id inside the table: one read each
            else:
                inside = (ids >= 0) & (ids < len(self.table))
                pos = np.where(inside, self.table[np.where(inside, ids, 0)], -1)
            found = pos >= 0
            return (pos if found.all() else np.maximum(pos, 0)), found
        pos = np.minimum(np.searchsorted(self.sorted_ids, ids), len(self.sorted_ids) - 1)
        return pos, self.sorted_ids[pos] == ids

    def positions(self, ids: np.ndarray, error: str) -> np.ndarray:
        """Positions of ids that must all be in the index; else ValueError(`error`: the first few)."""
        pos, found = self.lookup(ids)
        if not found.all():
            raise ValueError(f"{error}: {ids[~found][:5].tolist()}")
        return pos
