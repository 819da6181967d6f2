"""Reading the released visual zip at disk speed.

The final round's archive holds millions of ~8 KB .npy members, so nothing here does Python work
per member on the common path:
- the central directory is parsed with numpy (zip64 included): signatures, sizes, offsets and the
  photo_id in each member's name are gathered column-wise;
- members are read in large sequential blocks; stored members that share the first member's .npy
  header (the released files all do) are sliced out of the block as strided views, runs of
  equally spaced members at a time, and copied straight into the output matrix.
Anything unusual (deflated members, another header, a damaged member) takes the careful
per-member path in `visual.VectorDecoder`, which raises `DataFormatError` naming the member.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from kuai_assets.formats.released import DataFormatError
from kuai_assets.formats.visual import (
    CHUNK_VECTORS,
    NpyLayout,
    VectorChunk,
    VectorDecoder,
    parse_npy,
    photo_id_from_name,
)

BLOCK_BYTES = 64 << 20
# blocks read and decoded at once, each on its own thread: one per core, 2 to 4 (on 2 cores a third
# and fourth block in flight only hold memory: ~0.13 GB less at the same pass rate, BENCHMARKS.md)
READ_AHEAD = max(2, min(4, os.cpu_count() or 2))
NAME_CHUNK = 500_000
SATURATED = 0xFFFFFFFF


def _unaligned(buf: np.ndarray, dtype: str) -> np.ndarray:
    """`buf` (contiguous bytes) read as little-endian integers starting at every byte offset."""
    size = np.dtype(dtype).itemsize
    return np.ndarray(shape=(max(len(buf) - size + 1, 0),), dtype=dtype, buffer=np.ascontiguousarray(buf), strides=(1,))


def _u16(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return _unaligned(buf, "<u2")[at].astype(np.int64)


def _u32(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return _unaligned(buf, "<u4")[at].astype(np.int64)


def _u64(buf: np.ndarray, at: np.ndarray) -> np.ndarray:
    return _unaligned(buf, "<u8")[at].astype(np.int64)


@dataclass
class ZipIndex:
    """The members of a zip, as columns."""

    cd: np.ndarray  # the central directory bytes (names are read from it on demand)
    entry: np.ndarray  # offset of each member's central directory record in `cd`
    name_length: np.ndarray
    method: np.ndarray
    compressed_size: np.ndarray
    header_offset: np.ndarray
    end_of_data: int  # where the central directory starts

    def __len__(self) -> int:
        return len(self.entry)

    def name(self, i: int) -> str:
        start = int(self.entry[i]) + 46
        return self.cd[start : start + int(self.name_length[i])].tobytes().decode("utf-8", "replace")


def _end_records(path: Path) -> tuple[int, int, int]:
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
    return count, cd_size, cd_offset


def _walk_entries(path: Path, cd: np.ndarray, count: int) -> np.ndarray:
    """Entry offsets by walking record to record (the slow, always-right way)."""
    raw = cd.tobytes()
    positions = np.empty(count, dtype=np.int64)
    pos = 0
    for i in range(count):
        if raw[pos : pos + 4] != b"PK\x01\x02":
            raise DataFormatError(path, f"damaged central directory at member {i}")
        positions[i] = pos
        n, x, c = struct.unpack_from("<HHH", raw, pos + 28)
        pos += 46 + n + x + c
    return positions


def read_zip_index(path: Path) -> ZipIndex:
    count, cd_size, cd_offset = _end_records(path)
    with open(path, "rb") as f:
        f.seek(cd_offset)
        cd = np.frombuffer(f.read(cd_size), dtype=np.uint8)
    if len(cd) != cd_size:
        raise DataFormatError(path, "the zip's central directory is truncated")
    if count == 0:
        empty = np.zeros(0, dtype=np.int64)
        return ZipIndex(cd, empty, empty, empty, empty, empty, cd_offset)
    # every record starts with PK\x01\x02; accept the candidates if they chain exactly
    # (read as one little-endian uint32 at every byte offset: one comparison per byte, not four)
    entry = np.flatnonzero(_unaligned(cd, "<u4") == 0x02014B50)
    chained = False
    if len(entry) == count:
        following = entry + 46 + _u16(cd, entry + 28) + _u16(cd, entry + 30) + _u16(cd, entry + 32)
        chained = bool(np.array_equal(following[:-1], entry[1:]) and following[-1] <= len(cd))
    if not chained:
        entry = _walk_entries(path, cd, count)
    name_length = _u16(cd, entry + 28)
    method = _u16(cd, entry + 10)
    compressed = _u32(cd, entry + 20)
    uncompressed = _u32(cd, entry + 24)
    offset = _u32(cd, entry + 42)
    big = (compressed == SATURATED) | (uncompressed == SATURATED) | (offset == SATURATED)
    if big.any():  # zip64: the real values sit in the extra field with tag 0x0001
        at = np.flatnonzero(big)
        extra = entry[at] + 46 + name_length[at]
        if not (_u16(cd, extra) == 1).all():
            raise DataFormatError(path, "zip64 member without its zip64 extra field first")
        field = extra + 4 + 8 * (uncompressed[at] == SATURATED)
        wide_size = compressed[at] == SATURATED
        compressed[at] = np.where(wide_size, _u64(cd, field), compressed[at])
        field = field + 8 * wide_size
        offset[at] = np.where(offset[at] == SATURATED, _u64(cd, field), offset[at])
    return ZipIndex(cd, entry, name_length, method, compressed, offset, cd_offset)


def member_photo_ids(path: Path, index: ZipIndex) -> tuple[np.ndarray, np.ndarray]:
    """(members to read, their photo_ids): names like `<any folder>/<digits>`, parsed column-wise.

    Names the fast path cannot read (folders, OS junk, other shapes) go through
    `visual.photo_id_from_name`, which skips or rejects them with a message.
    """
    keep: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    width = int(index.name_length.max()) if len(index) else 0
    columns = np.arange(width)
    for start in range(0, len(index), NAME_CHUNK):
        rows = np.arange(start, min(start + NAME_CHUNK, len(index)))
        length = index.name_length[rows]
        at = np.minimum(index.entry[rows, None] + 46 + columns, len(index.cd) - 1)
        chars = index.cd[at]
        inside = columns < length[:, None]
        slash = (chars == ord("/")) & inside
        last_slash = np.where(slash.any(axis=1), width - 1 - np.argmax(slash[:, ::-1], axis=1), -1)
        base = inside & (columns > last_slash[:, None])
        digits = (chars >= ord("0")) & (chars <= ord("9"))
        base_length = base.sum(axis=1)
        simple = (base_length > 0) & (base_length <= 18) & (~base | digits).all(axis=1)
        value = np.zeros(len(rows), dtype=np.int64)
        for c in range(width):
            take = base[:, c]
            value = np.where(take, value * 10 + (chars[:, c].astype(np.int64) - ord("0")), value)
        keep.append(rows[simple])
        ids.append(value[simple])
        for i in rows[~simple]:
            name = index.name(int(i))
            photo_id = photo_id_from_name(name, f"{path} member {name!r}")
            if photo_id is not None:
                keep.append(np.array([i]))
                ids.append(np.array([photo_id], dtype=np.int64))
    members = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    photo_id = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    return members, photo_id


class ZipVectors:
    """The vectors of a zip archive: index parsed once, members read in sequential blocks."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.index = index = read_zip_index(self.path)
        members, photo_ids = member_photo_ids(self.path, index)
        order = np.argsort(index.header_offset[members], kind="stable")  # read in file order
        self.members = members[order]
        self.photo_ids = photo_ids[order]
        # each member's bytes end where the next member (or the central directory) begins
        starts = index.header_offset
        by_offset = np.argsort(starts, kind="stable")
        self.member_end = np.empty_like(starts)
        if len(by_offset):
            self.member_end[by_offset[:-1]] = starts[by_offset[1:]]
            self.member_end[by_offset[-1]] = index.end_of_data

    def __len__(self) -> int:
        return len(self.members)

    def _blocks(self, chunk_vectors: int, ranges: list[tuple[int, int]] | None = None) -> Iterator[tuple[int, int]]:
        """[i, j) ranges of members, each at most BLOCK_BYTES on disk (at least one member),
        covering `ranges` of member positions in order (default: every member)."""
        starts = self.index.header_offset[self.members]
        ends = self.member_end[self.members]
        for first, last in ranges if ranges is not None else [(0, len(self.members))]:
            i = first
            while i < last:
                limit = np.searchsorted(ends, starts[i] + BLOCK_BYTES, side="right")
                j = int(min(max(limit, i + 1), i + chunk_vectors, last))
                yield i, j
                i = j

    def chunks(
        self,
        chunk_vectors: int = CHUNK_VECTORS,
        on_progress: Callable[[int, int], None] | None = None,
        reuse_after: int | None = None,
        ranges: list[tuple[int, int]] | None = None,
        prepare: Callable[[VectorChunk], object] | None = None,
    ) -> Iterator:
        """Vectors in file order, one block at a time.

        READ_AHEAD blocks are read and decoded at once, each on its own thread, while the caller
        uses the last one. With `prepare`, each chunk is also passed through it on the thread
        that decoded it (numpy releases the GIL, so the caller's own per-chunk work runs in
        parallel too), and what it returns is yielded instead of the chunk.
        With `reuse_after` = n, the caller holds at most n chunks at once (the last one yielded
        among them) and the chunks' arrays are reused after that; without it every chunk gets
        a new array. With `ranges` (sorted, disjoint [i, j) member positions) only those
        members are read."""
        index, members = self.index, self.members
        total = len(members)
        blocks = list(self._blocks(chunk_vectors, ranges))
        if not blocks:
            return
        # a block's buffer is free again once it is decoded, before the block READ_AHEAD on is asked for
        buffers = [np.empty(0, dtype=np.uint8) for _ in range(READ_AHEAD)]
        out_buffers: list = [None] * (reuse_after + READ_AHEAD if reuse_after else 0)
        with open(self.path, "rb", buffering=0) as f, ThreadPoolExecutor(max_workers=READ_AHEAD) as pool:
            try:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL if ranges is None else os.POSIX_FADV_RANDOM)
            except (AttributeError, OSError):
                pass
            decoder = VectorDecoder()
            decoder.layout = layout = self._layout(f.fileno(), int(members[blocks[0][0]]))
            decoder.first = f"{self.path} member {index.name(int(members[blocks[0][0]]))!r}"
            nbytes = layout.dim * layout.dtype.itemsize
            header = np.frombuffer(layout.header, dtype=np.uint8)

            def read(k: int) -> np.ndarray:
                i, j = blocks[k]
                start = int(index.header_offset[members[i]])
                length = int(self.member_end[members[j - 1]]) - start
                slot = k % len(buffers)
                if len(buffers[slot]) < length:
                    buffers[slot] = np.empty(max(length, BLOCK_BYTES), dtype=np.uint8)
                buf = buffers[slot][:length]
                if os.preadv(f.fileno(), [memoryview(buf)], start) != length:
                    raise DataFormatError(self.path, "archive is truncated")
                return buf

            def decode_block(k: int):
                """On a read thread: block k read, its members decoded, then `prepare`d."""
                i, j = blocks[k]
                buf = read(k)
                block_members = members[i:j]
                block_start = int(index.header_offset[block_members[0]])
                rel = index.header_offset[block_members] - block_start
                signature_ok = (buf[rel] == 0x50) & (buf[rel + 1] == 0x4B) & (buf[rel + 2] == 3) & (buf[rel + 3] == 4)
                if not signature_ok.all():
                    bad = int(block_members[np.argmin(signature_ok)])
                    raise DataFormatError(f"{self.path} member {index.name(bad)!r}", "damaged local header")
                data = rel + 30 + _u16(buf, rel + 26) + _u16(buf, rel + 28)
                size = index.compressed_size[block_members]
                method = index.method[block_members]
                if out_buffers:
                    turn = k % len(out_buffers)
                    if out_buffers[turn] is None or len(out_buffers[turn]) < j - i:
                        out_buffers[turn] = np.empty((max(chunk_vectors, j - i), layout.dim), dtype=layout.dtype)
                    out = out_buffers[turn][: j - i]
                else:
                    out = np.empty((j - i, layout.dim), dtype=layout.dtype)
                fast = (method == 0) & (size == len(header) + nbytes)
                if fast.any():
                    at = np.flatnonzero(fast)
                    same = _headers_match(buf, data[at], header)
                    fast[at[~same]] = False
                    _copy_strided(buf, data[fast] + len(header), nbytes, layout.dtype, out, np.flatnonzero(fast))
                for k_slow in np.flatnonzero(~fast):
                    member = int(block_members[k_slow])
                    payload = self._payload(buf, int(data[k_slow]), int(size[k_slow]), int(method[k_slow]), member)
                    out[k_slow] = decoder.decode(payload, f"{self.path} member {index.name(member)!r}")
                chunk = VectorChunk(self.photo_ids[i:j], out)
                return chunk if prepare is None else prepare(chunk)

            # block k + READ_AHEAD is asked for once block k is taken: its read buffer is free,
            # and its output array is the one of a chunk the caller no longer holds
            pending = deque(pool.submit(decode_block, k) for k in range(min(READ_AHEAD, len(blocks))))
            for k, (_, j) in enumerate(blocks):
                item = pending.popleft().result()
                if k + READ_AHEAD < len(blocks):
                    pending.append(pool.submit(decode_block, k + READ_AHEAD))
                yield item
                if on_progress:
                    on_progress(j, total)

    def _layout(self, fd: int, member: int) -> NpyLayout:
        """The .npy layout of one member, read on its own (the fast path expects it of every member)."""
        where = f"{self.path} member {self.index.name(member)!r}"
        start = int(self.index.header_offset[member])
        local = os.pread(fd, 30, start)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise DataFormatError(where, "damaged local header")
        name_length, extra_length = struct.unpack_from("<HH", local, 26)
        size = int(self.index.compressed_size[member])
        raw = np.frombuffer(os.pread(fd, size, start + 30 + name_length + extra_length), dtype=np.uint8)
        if len(raw) != size:
            raise DataFormatError(self.path, "archive is truncated")
        return parse_npy(self._payload(raw, 0, size, int(self.index.method[member]), member), where)

    def _payload(self, buf: np.ndarray, start: int, size: int, method: int, member: int) -> bytes:
        raw = buf[start : start + size].tobytes()
        if method == 0:
            return raw
        where = f"{self.path} member {self.index.name(member)!r}"
        if method != 8:
            raise DataFormatError(where, f"unsupported zip compression method {method}")
        try:
            return zlib.decompress(raw, -15)
        except zlib.error as exc:
            raise DataFormatError(where, f"cannot be inflated ({exc})") from None


def _equally_spaced_runs(starts: np.ndarray) -> list[tuple[int, int]]:
    """[a, b) ranges of `starts` in which consecutive starts are equally far apart."""
    if len(starts) == 0:
        return []
    breaks = np.flatnonzero(np.diff(starts, n=2) != 0) + 2 if len(starts) > 2 else np.zeros(0, dtype=np.int64)
    bounds = [0, *breaks.tolist(), len(starts)]
    return list(zip(bounds[:-1], bounds[1:]))


def _strided(buf: np.ndarray, starts: np.ndarray, a: int, b: int, nbytes: int) -> np.ndarray:
    """The `nbytes` at starts[a:b] (equally spaced, b - a >= 2) as one (b - a, nbytes) view of buf."""
    stride = int(starts[a + 1] - starts[a])
    return np.lib.stride_tricks.as_strided(buf[int(starts[a]) :], shape=(b - a, nbytes), strides=(stride, 1))


def _headers_match(buf: np.ndarray, starts: np.ndarray, header: np.ndarray) -> np.ndarray:
    """Whether the bytes at each of `starts` are `header`: a run of equally spaced members is
    compared as one strided view (gathering the bytes by index took about 17 ms per 4,096
    members, as long as copying their vectors)."""
    same = np.zeros(len(starts), dtype=bool)
    for a, b in _equally_spaced_runs(starts):
        if b - a >= 2:
            same[a:b] = (_strided(buf, starts, a, b, len(header)) == header).all(axis=1)
        else:
            same[a] = np.array_equal(buf[int(starts[a]) : int(starts[a]) + len(header)], header)
    return same


def _copy_strided(buf: np.ndarray, starts: np.ndarray, nbytes: int, dtype: np.dtype, out: np.ndarray, rows: np.ndarray) -> None:
    """Copy `nbytes` at each of `starts` into out[rows]: equally spaced runs as one strided view."""
    for a, b in _equally_spaced_runs(starts):
        if b - a >= 2:
            view = _strided(buf, starts, a, b, nbytes)
            first, last = int(rows[a]), int(rows[b - 1])
            if last - first == b - a - 1:  # consecutive output rows: one copy, bytes to bytes
                np.copyto(out[first : last + 1].view(np.uint8).reshape(b - a, nbytes), view)
            else:
                out[rows[a:b]] = np.ascontiguousarray(view).view(dtype)
        else:
            out[rows[a]] = np.frombuffer(buf, dtype=dtype, count=out.shape[1], offset=int(starts[a]))
