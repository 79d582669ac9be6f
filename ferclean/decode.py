"""Image files -> pixels: the one decoder used by ingest (which checks every file) and by the
faces stage (which analyses the pixels), so both see the same upright image.

What a web scrape brings, and what becomes of it (`decode_image`):
- JPEG (baseline, progressive, CMYK/YCCK incl. Adobe's inverted CMYK), PNG (8/16 bit, grey, palette,
  alpha), WEBP, GIF (the first frame), BMP, TIFF: decoded by Pillow from the bytes, whatever the
  file's extension claims;
- EXIF orientation (tags 2-8) is applied, so faces come out upright and width/height are those of
  the upright image;
- alpha is composited over white (a transparent background is usually white on the page);
- 16-bit grey is scaled to 8 bits (v / 257), not clipped; other modes (CMYK, YCbCr, LAB, HSV,
  palette) become RGB;
- the result is uint8 (H, W) for grey sources ("1", L, LA, I;16, ...) and (H, W, 3) **BGR**
  (OpenCV's order) for colour ones.
Unusable files raise :class:`UnusableImage` with a `rejects` reason code: `empty_file`,
`not_an_image`, `too_many_pixels` (checked from the header, before decoding), `truncated_image`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# We enforce our own pixel limit before decoding; PIL's global bomb check would raise first.
Image.MAX_IMAGE_PIXELS = None

EXIF_ORIENTATION = 0x0112


class UnusableImage(Exception):
    """Bytes that cannot become an image; `reason_code` is a `rejects` reason code."""

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, upright image. `pixels` is None when decoded with `pixels=False`."""

    width: int
    height: int
    channels: int  # bands of the source image (1 grey, 2 grey+alpha, 3 colour, 4 colour+alpha or CMYK)
    format: str  # what the bytes are (Pillow's name: JPEG, PNG, WEBP, GIF, BMP, TIFF, ...)
    mode: str  # Pillow mode of the source (L, RGB, RGBA, CMYK, I;16, P, ...)
    orientation: int  # EXIF orientation that was applied (1 = none)
    pixels: np.ndarray | None  # uint8 (H, W) grey or (H, W, 3) BGR


def _orientation(img: Image.Image) -> int:
    try:
        o = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is no reason to lose the image
        return 1
    return o if 1 <= o <= 8 else 1


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None] / 255.0 if rgb.ndim == 3 else alpha.astype(np.float32) / 255.0
    return np.clip(rgb.astype(np.float32) * a + 255.0 * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)


def to_array(img: Image.Image) -> np.ndarray:
    """A loaded Pillow image -> uint8 (H, W) grey or (H, W, 3) BGR (see the module docstring)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img).astype(np.float64)
        return np.clip(a / 257.0 + 0.5, 0, 255).astype(np.uint8)
    if mode == "F":
        return np.clip(np.asarray(img, dtype=np.float64) + 0.5, 0, 255).astype(np.uint8)
    if mode in ("1", "L"):
        return np.ascontiguousarray(np.asarray(img.convert("L"), dtype=np.uint8))
    if mode in ("LA", "La"):
        a = np.asarray(img.convert("LA"), dtype=np.uint8)
        return _over_white(a[..., 0], a[..., 1])
    if mode in ("RGBA", "RGBa"):
        a = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        rgb = _over_white(a[..., :3], a[..., 3])
    else:  # RGB, CMYK, YCbCr, LAB, HSV, RGBX, ...
        rgb = np.asarray(img if mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _plain_png(data: bytes, max_pixels: int | None) -> DecodedImage | None:
    """The fast path for the commonest crop file: an 8-bit grey or RGB PNG with no transparency
    and no EXIF chunk, decoded by OpenCV (~3x faster than Pillow, the same pixels). None when the
    file is anything else or OpenCV cannot decode it (then Pillow decides what is wrong)."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, colour = data[24], data[25]
    if depth != 8 or colour not in (0, 2) or b"tRNS" in data or b"eXIf" in data:
        return None
    if max_pixels is not None and w * h > max_pixels:
        return None
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.shape[:2] != (h, w) or arr.dtype != np.uint8:
        return None
    return DecodedImage(w, h, 1 if colour == 0 else 3, "PNG", "L" if colour == 0 else "RGB", 1, arr)


def decode_image(data: bytes, max_pixels: int | None = None, pixels: bool = True) -> DecodedImage:
    """Decode image bytes fully (every byte is checked); raise UnusableImage with the reason.

    `max_pixels`: width x height above which the image is `too_many_pixels` (None: no limit).
    `pixels=False` checks and measures without building the array (what ingest needs).
    """
    if not data:
        raise UnusableImage("empty_file", "file is empty (0 bytes)")
    if pixels:
        fast = _plain_png(data, max_pixels)
        if fast is not None:
            return fast
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnusableImage("not_an_image", "not a readable image format") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reject, not a crash
        raise UnusableImage("not_an_image", f"cannot open image: {exc}") from None
    w, h = img.size
    if max_pixels is not None and w * h > max_pixels:
        raise UnusableImage("too_many_pixels", f"{w}x{h} = {w * h} pixels exceeds the limit {max_pixels}")
    fmt, src_mode, bands = str(img.format or "unknown"), img.mode, len(img.getbands())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.seek(0)  # animated GIF/WEBP/TIFF: the first frame
            img.load()
    except Exception as exc:  # noqa: BLE001
        raise UnusableImage("truncated_image", f"image data is truncated or corrupt: {exc}") from None
    if w < 1 or h < 1:
        raise UnusableImage("not_an_image", f"image has no pixels ({w}x{h})")
    orientation = _orientation(img)
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    arr = None
    if pixels:
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        try:
            arr = to_array(img)
        except Exception as exc:  # noqa: BLE001 - an exotic mode Pillow cannot convert
            raise UnusableImage("not_an_image", f"cannot convert {src_mode} pixels: {exc}") from None
    return DecodedImage(int(w), int(h), bands, fmt, src_mode, orientation, arr)


def read_image(path: str | Path, max_pixels: int | None = None) -> DecodedImage:
    """Read and decode an image file; UnusableImage (file_missing, unreadable_file, or as
    :func:`decode_image`) when it cannot be used."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise UnusableImage("file_missing", f"{p} does not exist") from None
    except OSError as exc:
        raise UnusableImage("unreadable_file", f"cannot read {p}: {exc}") from None
    return decode_image(data, max_pixels)
