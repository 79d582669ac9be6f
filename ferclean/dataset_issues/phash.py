"""Perceptual hashes (DCT pHash) of images, computed in batches.

The hash is the classic 64-bit pHash, bit-for-bit the one of ``imagehash.phash`` (hash_size 8,
highfreq_factor 4): grayscale, resize to 32x32 (PIL Lanczos), 2-D DCT-II, keep the 8x8 lowest
frequencies, bit = coefficient > median of those 64 coefficients. Bits are packed row-major,
first bit most significant, so ``int(str(imagehash.phash(img)), 16) == phash64(...)``.

``imagehash`` hashes one image at a time; here the DCT is one batched matrix product
(``D8 @ X @ D8.T`` with the 8x32 DCT matrix), which is what keeps 1 M images cheap.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

HASH_SIDE = 8
RESIZE_SIDE = 32


def dct_matrix(n: int = RESIZE_SIDE, keep: int = HASH_SIDE) -> np.ndarray:
    """Unnormalised DCT-II matrix rows 0..keep-1, shape (keep, n): D[k, j] = 2 cos(pi k (2j+1) / 2n)."""
    k = np.arange(keep)[:, None]
    j = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * j + 1) / (2 * n))


_D8 = dct_matrix()


def phash_from_resized(pixels: np.ndarray) -> np.ndarray:
    """pHash of already resized grayscale images.

    pixels: (n, 32, 32) array (any numeric dtype, 0-255 scale). Returns (n,) uint64 hashes.
    """
    x = np.asarray(pixels, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (RESIZE_SIDE, RESIZE_SIDE):
        raise ValueError(f"expected (n, 32, 32) pixels, got {x.shape}")
    low = np.einsum("ki,nij,lj->nkl", _D8, x, _D8, optimize=True).reshape(len(x), -1)
    med = np.median(low, axis=1, keepdims=True)
    bits = (low > med).astype(np.uint8)
    packed = np.packbits(bits, axis=1)  # (n, 8) bytes, big-endian bit order
    return packed.view(">u8").ravel().astype(np.uint64)


def resize_for_hash(img: Image.Image) -> np.ndarray:
    """Grayscale 32x32 uint8 array of a PIL image (Lanczos, as imagehash does)."""
    return np.asarray(img.convert("L").resize((RESIZE_SIDE, RESIZE_SIDE), Image.Resampling.LANCZOS))


def pixel_stats(img: Image.Image) -> tuple[float, float]:
    """(std of gray levels 0-255, fraction of pixels within 8 levels of the image's median).

    Both describe a blank or near-uniform image (a cheap not-a-face cue).
    """
    g = np.asarray(img.convert("L"), dtype=np.float32)
    med = float(np.median(g))
    return float(g.std()), float(np.mean(np.abs(g - med) <= 8))


def load_image(src: str | Path | bytes) -> Image.Image:
    """Open an image from a path or from encoded bytes (e.g. a PNG crop)."""
    if isinstance(src, bytes | bytearray | memoryview):
        return Image.open(io.BytesIO(bytes(src)))
    return Image.open(src)


def hash_images(
    sources: Sequence[str | Path | bytes], mirror: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Hash a batch of images given as paths or encoded bytes.

    Returns (hashes uint64 (n,), pixel_std float32 (n,), flat_fraction float32 (n,),
    mirrored hashes uint64 (n,) or None, ok bool (n,)). Unreadable images get ok=False, hash 0.
    """
    n = len(sources)
    resized = np.zeros((n, RESIZE_SIDE, RESIZE_SIDE), dtype=np.uint8)
    std = np.zeros(n, dtype=np.float32)
    flat = np.zeros(n, dtype=np.float32)
    ok = np.zeros(n, dtype=bool)
    for i, src in enumerate(sources):
        try:
            with load_image(src) as img:
                img.load()
                resized[i] = resize_for_hash(img)
                std[i], flat[i] = pixel_stats(img)
            ok[i] = True
        except (OSError, ValueError, Image.DecompressionBombError):
            ok[i] = False
    hashes = phash_from_resized(resized)
    hashes[~ok] = 0
    mirrored = None
    if mirror:
        mirrored = phash_from_resized(resized[:, :, ::-1])
        mirrored[~ok] = 0
    return hashes, std, flat, mirrored, ok


def iter_chunks(n: int, size: int) -> Iterable[slice]:
    """Consecutive slices covering range(n) in steps of `size`."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
