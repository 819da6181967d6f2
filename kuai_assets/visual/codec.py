"""The store's encodings of a float vector: encode, decode, round as stored, and the checks that
refuse what an encoding cannot keep.

`bfloat16` (the default) keeps the top 16 bits of each float32, rounded to nearest: half the
bytes, float32's full range, 8 bits of precision, and converts at memory speed (numpy's float16
cast runs at a tenth of that, which would make consolidation CPU-bound). `float16` and `float32`
are there too. `python -m benchmarks.encoding_check` measures that the PCA and the clusters come
out the same as from the float32 values.
"""

from __future__ import annotations

import numpy as np

from kuai_assets.formats.released import DataFormatError

FLOAT16_MAX = 65504.0
# each encoding's dtype in the store (bfloat16 is kept as its 16 bits)
ENCODINGS = {"bfloat16": np.dtype("<u2"), "float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def encode(vectors: np.ndarray, encoding: str) -> np.ndarray:
    """float vectors -> the store's encoding. May overwrite `vectors` (a float32 chunk we own)."""
    if encoding == "float32":
        return vectors.astype(np.float32, copy=False)
    if encoding == "float16":
        return vectors.astype(np.float16)
    bits = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32)
    bits += 0x8000  # round to nearest on the 16 dropped bits
    out = np.empty(bits.shape, dtype=np.uint16)
    np.right_shift(bits, 16, out=out, casting="unsafe")
    return out


def decode(block: np.ndarray, encoding: str) -> np.ndarray:
    """The store's encoding -> float32 (a new array for bfloat16 and float16)."""
    if encoding != "bfloat16":
        return np.asarray(block, dtype=np.float32)
    out = np.empty(block.shape, dtype=np.uint32)
    np.left_shift(block, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def round_to_encoding(vectors: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(what the store keeps, those values as float32): the values later steps would read back.

    bfloat16 rounds in place: `vectors` (a float32 chunk we own) then holds the decoded values and
    the stored array is a new one. In the other encodings the stored array may be `vectors` itself.
    """
    if encoding == "bfloat16" and vectors.dtype == np.float32 and vectors.flags.c_contiguous and vectors.flags.writeable:
        bits = vectors.view(np.uint32)
        bits += 0x8000  # round to nearest on the 16 dropped bits
        out = np.empty(bits.shape, dtype=np.uint16)
        np.right_shift(bits, 16, out=out, casting="unsafe")
        bits &= 0xFFFF0000
        return out, vectors
    stored = encode(vectors, encoding)
    return stored, decode(stored, encoding)


def check_vectors(vectors: np.ndarray, photo_id: np.ndarray, where, encoding: str) -> None:
    """Refuse (DataFormatError naming `where` and the photo) NaN or infinity, or, for a float16
    store, values beyond its range."""
    if encoding != "float16":
        # one pass: NaN and infinity make a row's sum NaN or infinite; a finite row's sum can
        # only overflow, so the rows whose sum is not finite are looked at value by value
        with np.errstate(over="ignore", invalid="ignore"):
            sums = vectors.sum(axis=1)
        suspect = np.flatnonzero(~np.isfinite(sums))
        if len(suspect):
            finite = np.isfinite(vectors[suspect]).all(axis=1)
            if not finite.all():
                raise DataFormatError(where, "vector contains NaN or infinity", photo_id=int(photo_id[suspect[np.argmin(finite)]]))
        return
    # one pass each for max and min: NaN propagates through both, infinity shows in one
    high, low = vectors.max(axis=1), vectors.min(axis=1)
    finite = np.isfinite(high) & np.isfinite(low)
    if not finite.all():
        raise DataFormatError(where, "vector contains NaN or infinity", photo_id=int(photo_id[np.argmin(finite)]))
    too_big = (high > FLOAT16_MAX) | (low < -FLOAT16_MAX)
    if too_big.any():
        raise DataFormatError(
            where,
            "vector values exceed the float16 range; set the store encoding to bfloat16 or float32",
            photo_id=int(photo_id[np.argmax(too_big)]),
        )


def check_rounded(stored: np.ndarray, photo_id: np.ndarray, where, encoding: str) -> None:
    """After rounding to bfloat16 (NaN and infinity were refused before): refuse a finite value
    within half a bfloat16 step of float32's largest (above about 3.39e38), which rounds up to
    infinity. Other encodings: nothing to check."""
    if encoding != "bfloat16":
        return
    overflowed = (stored & 0x7FFF).max(axis=1) >= 0x7F80  # every exponent bit set: infinity
    if overflowed.any():
        raise DataFormatError(
            where,
            "vector values exceed the bfloat16 range (about 3.39e38); set the store encoding to float32",
            photo_id=int(photo_id[np.argmax(overflowed)]),
        )
