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
        """Dictionary code of each row's content_sha256 (equal code = identical bytes)."""
        return self.shas.dictionary_encode().indices.to_numpy(zero_copy_only=False)


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
