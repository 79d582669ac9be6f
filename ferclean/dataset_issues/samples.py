"""The samples' columns the dataset-issue search needs, held compactly, and the sample_id -> row lookup.

At 1 M samples the earlier Python lists (sample ids, source paths, sha256 strings, a dict from sample id
to row, a list of quality flags per sample) cost ~0.6 GB of Python objects on top of the whole `samples`
table read at once. Here the table is read part by part, strings stay in Arrow arrays (about their bytes,
no object per row), split and label become small integer codes, and the id -> row map is a sorted array
of 64-bit hashes of the ids (16 bytes a row), each hit checked against the id itself. Python values are
made only for the rows a caller asks for (`ids`, `paths`, ... of an index array).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ferclean.memory import release_unused
from ferclean.store import Store

COLUMNS = ("sample_id", "source_path", "content_sha256", "split", "label_original", "width", "height")
_HASH_CHUNK = 16_384


def id_keys(ids: pa.Array | Sequence[str]) -> np.ndarray:
    """(n,) uint64: the first 8 bytes of blake2b of each id (little-endian), chunk by chunk."""
    arr = ids if isinstance(ids, pa.Array | pa.ChunkedArray) else pa.array(list(ids), pa.string())
    out = np.zeros(len(arr), np.uint64)
    for s in range(0, len(arr), _HASH_CHUNK):
        part = arr.slice(s, _HASH_CHUNK).to_pylist()
        out[s : s + len(part)] = np.fromiter(
            (int.from_bytes(hashlib.blake2b(x.encode(), digest_size=8).digest(), "little") for x in part),
            np.uint64, len(part))
    return out


class SampleIndex:
    """sample_id -> row for an Arrow string array of ids: the same answer as `{id: row}` (the last row of a
    repeated id), in 16 bytes a row (sorted hash keys + their rows) instead of a dict of Python strings."""

    def __init__(self, ids: pa.Array):
        self.ids = ids
        keys = id_keys(ids)
        self._order = np.argsort(keys, kind="stable")
        self._keys = keys[self._order]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, query: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
        """(len(query),) int64 row of each queried id, -1 where the id is not a sample."""
        q = query if isinstance(query, pa.Array | pa.ChunkedArray) else pa.array(list(query), pa.string())
        if isinstance(q, pa.ChunkedArray):
            q = q.combine_chunks()
        out = np.full(len(q), -1, np.int64)
        if not len(q) or not len(self._keys):
            return out
        k = id_keys(q)
        right = np.searchsorted(self._keys, k, side="right")  # one past the last equal key
        has = (right > 0) & (self._keys[np.maximum(right - 1, 0)] == k)
        cand = np.where(has, self._order[np.maximum(right - 1, 0)], 0)
        same = has & np.asarray(pc.fill_null(pc.equal(q.cast(pa.string()), self.ids.take(pa.array(cand)).cast(pa.string())),
                                             False).to_numpy(zero_copy_only=False), bool)
        out[same] = cand[same]
        # a hash shared by different ids (about 1 in 10^7 at 1 M ids): look through that run of keys
        for j in np.flatnonzero(has & ~same):
            want = q[int(j)].as_py()
            lo = np.searchsorted(self._keys, k[j], side="left")
            hits = [int(r) for r in self._order[lo : right[j]] if self.ids[int(r)].as_py() == want]
            out[j] = max(hits) if hits else -1
        return out


@dataclass
class SampleTable:
    """The search's view of `samples`: Arrow string arrays, integer codes, one numpy array per number."""

    ids: pa.Array
    paths: pa.Array
    shas: pa.Array
    split_codes: np.ndarray  # int32, -1 = null
    split_values: list[str]
    label_codes: np.ndarray  # int32, -1 = null
    label_values: list[str]
    areas: np.ndarray  # int64 width * height
    index: SampleIndex

    @property
    def n(self) -> int:
        return len(self.ids)

    @staticmethod
    def _take(arr: pa.Array, idx: np.ndarray) -> list:
        return arr.take(pa.array(np.asarray(idx, np.int64))).to_pylist()

    def id_list(self, idx: np.ndarray) -> list[str]:
        return self._take(self.ids, idx)

    def path_list(self, idx: np.ndarray) -> list[str]:
        return self._take(self.paths, idx)

    def sha_list(self, idx: np.ndarray) -> list[str]:
        return self._take(self.shas, idx)

    def split_list(self, idx: np.ndarray) -> list[str | None]:
        return _decode(self.split_codes, self.split_values, idx)

    def label_list(self, idx: np.ndarray) -> list[str | None]:
        return _decode(self.label_codes, self.label_values, idx)

    def sha_codes(self) -> np.ndarray:
        """A code per row, equal where content_sha256 is equal (identical bytes): :func:`sha_codes`."""
        return sha_codes(self.shas)


def sha_codes(shas: pa.Array, chunk: int = _HASH_CHUNK) -> np.ndarray:
    """(n,) int64, equal exactly where the strings of `shas` are equal; a null row equals no other row.

    Rows are grouped by a 64-bit key of each string (its first 16 hex digits for a hex digest, else
    blake2b), then every group of two or more rows is checked against the whole strings, so a shared key
    never joins different strings. 8 bytes a row. At 1 M digests, grouped with :func:`group_pairs` after, this
    peaked 77-88 MB above the samples table in four runs; Arrow's dictionary_encode of the column (a hash table
    and a copy of every distinct string) peaked 80-204 MB in five."""
    n = len(shas)
    keys = np.empty(n, np.uint64)
    nulls = np.zeros(n, bool)
    for s in range(0, n, chunk):
        part = shas.slice(s, chunk)
        keys[s : s + len(part)], nulls[s : s + len(part)] = _sha_keys(part)
    _, codes = np.unique(keys, return_inverse=True)
    codes = codes.astype(np.int64).ravel()
    fresh = int(codes.max()) + 1 if n else 0
    codes[nulls] = np.arange(fresh, fresh + int(nulls.sum()))
    fresh += int(nulls.sum())
    shared = np.flatnonzero((np.bincount(codes)[codes] >= 2) & ~nulls)  # confirm these by their strings
    seen: dict[int, dict[str, int]] = {}
    for row, code, value in zip(shared.tolist(), codes[shared].tolist(),
                                shas.take(pa.array(shared, pa.int64())).to_pylist(), strict=True):
        by_value = seen.setdefault(code, {})
        if value not in by_value:  # the first string of a key keeps its code; another one gets a new code
            by_value[value] = code if not by_value else fresh
            fresh += bool(len(by_value) > 1)
        codes[row] = by_value[value]
    return codes


_HEX = np.full(256, 255, np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)  # the first hex digit is the highest nibble


def _sha_keys(part: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(keys uint64, nulls bool) of one slice of strings: the first 16 hex digits read from the Arrow buffers
    (no Python object a row); blake2b of a string that does not start with 16 of them; 0 for null."""
    part = part.cast(pa.string())
    m = len(part)
    nulls = np.asarray(part.is_null().to_numpy(zero_copy_only=False), bool)
    offsets = np.frombuffer(part.buffers()[1], np.int32)[part.offset : part.offset + m + 1].astype(np.int64)
    data = np.frombuffer(part.buffers()[2], np.uint8) if part.buffers()[2] is not None else np.zeros(0, np.uint8)
    ok = ~nulls & (np.diff(offsets) >= 16)
    keys = np.zeros(m, np.uint64)
    rows = np.flatnonzero(ok)
    nib = _HEX[data[offsets[rows][:, None] + np.arange(16)]] if len(rows) else np.zeros((0, 16), np.uint8)
    hexed = (nib != 255).all(axis=1)
    keys[rows[hexed]] = (nib[hexed].astype(np.uint64) << _SHIFTS).sum(axis=1, dtype=np.uint64)
    other = ~nulls
    other[rows[hexed]] = False
    for i in np.flatnonzero(other).tolist():
        keys[i] = _blake_key(part[i].as_py())
    return keys, nulls


def _blake_key(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")


def _decode(codes: np.ndarray, values: list[str], idx: np.ndarray) -> list[str | None]:
    """The strings of `codes[idx]` (None for -1); equal strings are one shared object."""
    table = [*values, None]
    return [table[c] for c in codes[np.asarray(idx, np.int64)].tolist()]


def _codes(arr: pa.Array) -> tuple[np.ndarray, list[str]]:
    enc = arr.dictionary_encode()
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)
    return codes, enc.dictionary.to_pylist()


def read_samples(store: Store, batch_size: int = 65_536) -> SampleTable:
    """The `samples` columns of the search, part by part (no whole-table read), in the store's row order."""
    chunks: dict[str, list[pa.Array]] = {c: [] for c in COLUMNS}
    for batch in store.iter_part_batches("samples", list(COLUMNS), batch_size=batch_size):
        for c in COLUMNS:
            col = batch.column(c)
            chunks[c].append(col.cast(pa.int64()) if c in ("width", "height") else col.cast(pa.string()))

    def whole(c: str) -> pa.Array:
        typ = pa.int64() if c in ("width", "height") else pa.string()
        return pa.chunked_array(chunks.pop(c), typ).combine_chunks()

    ids, paths, shas = whole("sample_id"), whole("source_path"), whole("content_sha256")
    split_codes, split_values = _codes(whole("split"))
    label_codes, label_values = _codes(whole("label_original"))
    areas = pc.multiply(whole("width"), whole("height")).to_numpy(zero_copy_only=False)
    release_unused(heap=False)
    return SampleTable(ids, paths, shas, split_codes, split_values, label_codes, label_values,
                       np.asarray(areas), SampleIndex(ids))
