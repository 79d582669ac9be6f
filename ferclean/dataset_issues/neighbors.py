"""Near-duplicate search over 64-bit hashes without an N x N matrix.

Multi-index hashing (pigeonhole): cut the 64 bits into ``k + 1`` disjoint bands. Two hashes
within Hamming distance ``k`` differ in at most ``k`` bits, so at least one band is identical.
For each band we sort the band values, walk the runs of equal values, and verify every pair in a
run with a popcount of the XOR of the full hashes. A pair is reported only by the first band in
which it collides (later bands skip it), so no global de-duplication of pairs is needed.

Work is proportional to the number of candidate pairs (pairs sharing a band), memory to N plus the
pairs emitted for one offset step; both are far below N^2 for real hash sets. :func:`near_pairs_brute`
is the O(N^2)-time (chunked, O(N * chunk) memory) reference used by the tests.
"""

from __future__ import annotations

import numpy as np

HASH_BITS = 64


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance of uint64 arrays (broadcasting), as uint8."""
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64)))


def band_layout(n_bands: int, bits: int = HASH_BITS) -> list[tuple[int, int]]:
    """(shift, width) of `n_bands` disjoint bands covering `bits` bits, widths differing by <= 1."""
    if not 1 <= n_bands <= bits:
        raise ValueError(f"n_bands must be in 1..{bits}")
    widths = [bits // n_bands + (1 if i < bits % n_bands else 0) for i in range(n_bands)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def band_values(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    """The `width` bits of each hash starting at bit `shift` (LSB = bit 0), as uint64."""
    mask = np.uint64((1 << width) - 1)
    return (hashes >> np.uint64(shift)) & mask


def near_pairs_banded(
    hashes: np.ndarray, max_dist: int, n_bands: int | None = None, block: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """All pairs (i < j) with Hamming(hashes[i], hashes[j]) <= max_dist.

    hashes: (n,) uint64. n_bands defaults to max_dist + 1 (exact recall by pigeonhole; fewer
    bands would miss pairs, more bands only cost time); block: candidate pairs compared at a time (bounds the
    temporaries, not the result). Returns (pairs int64 (m, 2) sorted by
    (i, j), distances uint8 (m,), stats {"candidates": pairs checked, "bands": n_bands}).
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    n_bands = max_dist + 1 if n_bands is None else n_bands
    if n_bands < max_dist + 1:
        raise ValueError("n_bands must be >= max_dist + 1 for exact recall")
    layout = band_layout(n_bands)
    # each band in the narrowest unsigned type that holds it (16 bits for the 5 bands of max_dist 4: at 1M hashes
    # plus their mirrors, 20 MB of bands instead of 80 MB)
    all_bands = [band_values(h, s, w).astype(np.uint16 if w <= 16 else np.uint32 if w <= 32 else np.uint64)
                 for s, w in layout]
    found_i, found_j, found_d = [], [], []
    candidates = 0
    for b, vals in enumerate(all_bands):
        order = np.argsort(vals, kind="stable")
        sv = vals[order]
        # end (exclusive) of the run of equal values containing each sorted position
        starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
        run_len = np.diff(np.r_[starts, n])
        run_end = np.repeat(starts + run_len, run_len)
        pos = np.flatnonzero(np.repeat(run_len, run_len) > 1)  # sorted positions in runs of >= 2
        step = 1
        while len(pos):
            pos = pos[pos + step < run_end[pos]]
            if not len(pos):
                break
            # the candidate pairs (sorted position p, p + step) a block at a time: the temporaries of a step are
            # ~60 bytes a candidate, which at 1 M hashes plus mirrors was +220 MB of the search's peak
            for lo in range(0, len(pos), block):
                p = pos[lo:lo + block]
                a, c = order[p], order[p + step]
                candidates += len(a)
                d = hamming(h[a], h[c])
                keep = d <= max_dist
                if b and keep.any():  # drop pairs an earlier band already reported
                    ka, kc = a[keep], c[keep]
                    seen = np.zeros(len(ka), dtype=bool)
                    for prev in all_bands[:b]:
                        seen |= prev[ka] == prev[kc]
                    idx = np.flatnonzero(keep)
                    keep[idx[seen]] = False
                if keep.any():
                    i, j = np.minimum(a[keep], c[keep]), np.maximum(a[keep], c[keep])
                    found_i.append(i)
                    found_j.append(j)
                    found_d.append(d[keep])
            step += 1
    return _finish(found_i, found_j, found_d) + ({"candidates": int(candidates), "bands": n_bands},)


def near_pairs_brute(hashes: np.ndarray, max_dist: int, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every pair (i < j) within max_dist by chunked all-pairs comparison."""
    h = np.asarray(hashes, dtype=np.uint64)
    found_i, found_j, found_d = [], [], []
    for s in range(0, len(h), chunk):
        d = hamming(h[s : s + chunk, None], h[None, :])
        i, j = np.nonzero(d <= max_dist)
        i = i + s
        upper = i < j
        found_i.append(i[upper])
        found_j.append(j[upper])
        found_d.append(d[i[upper] - s, j[upper]])
    return _finish(found_i, found_j, found_d)


def _finish(fi: list, fj: list, fd: list) -> tuple[np.ndarray, np.ndarray]:
    if not fi:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.uint8)
    pairs = np.stack([np.concatenate(fi), np.concatenate(fj)], axis=1).astype(np.int64)
    dist = np.concatenate(fd).astype(np.uint8)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], dist[order]


def cross_pairs_banded(
    left: np.ndarray, right: np.ndarray, max_dist: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i into left, j into right) within max_dist, e.g. hashes vs mirrored hashes.

    Same banding as :func:`near_pairs_banded`, run on the concatenation; only left-right pairs
    are kept. Returns (pairs int64 (m, 2), distances uint8 (m,)).
    """
    nl = len(left)
    both = np.concatenate([np.asarray(left, np.uint64), np.asarray(right, np.uint64)])
    pairs, dist, _ = near_pairs_banded(both, max_dist)
    cross = (pairs[:, 0] < nl) & (pairs[:, 1] >= nl)
    out = pairs[cross].copy()
    out[:, 1] -= nl
    return out, dist[cross]
