"""Per-item checks shared by all sources: path safety, file bytes, image header and decode."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# We enforce our own pixel limit before decoding; PIL's global bomb check would raise first.
Image.MAX_IMAGE_PIXELS = None

SPLIT_SYNONYMS = {
    "train": "train", "training": "train",
    "valid": "valid", "val": "valid", "validation": "valid", "publictest": "valid", "dev": "valid",
    "test": "test", "privatetest": "test",
    "unlabelled": "unlabelled", "unlabeled": "unlabelled",
}


class ItemRejected(Exception):
    """An input item cannot become a sample; carries the rejects reason code."""

    def __init__(self, reason_code: str, message: str):
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message


def normalize_split(raw: object) -> str:
    text = str(raw).strip().lower().replace("_", "").replace("-", "")
    if text not in SPLIT_SYNONYMS:
        raise ItemRejected("malformed_row", f"unknown split {raw!r}")
    return SPLIT_SYNONYMS[text]


def resolve_inside(root: Path, rel: str) -> Path:
    """Resolve a manifest's image path under `root` (an absolute, resolved folder).

    Relative paths are taken from `root`; absolute paths are accepted when they lie inside it.
    Either way the file, after `..` and symlinks are resolved, must stay inside `root`.
    """
    if not rel or not rel.strip():
        raise ItemRejected("malformed_row", "empty image path")
    if os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":"):
        target = Path(rel).resolve()
        if not target.is_relative_to(root):
            raise ItemRejected("path_escapes_root", f"absolute path {rel!r} is outside the root {root} (see --root)")
        return target
    target = (root / rel).resolve()
    if not target.is_relative_to(root):
        raise ItemRejected("path_escapes_root", f"{rel!r} resolves to {target}, outside the root {root}")
    return target


def sample_id_for(root: Path, rel: str, target: Path) -> str:
    """The default sample_id of a manifest path: the path below `root` with forward slashes, the
    same whether the manifest wrote it relative or absolute."""
    rel = rel.replace("\\", "/")
    if not (os.path.isabs(rel) or (len(rel) > 1 and rel[1] == ":")):
        return rel
    lexical = Path(os.path.normpath(rel))
    if lexical.is_relative_to(root):
        return lexical.relative_to(root).as_posix()
    return target.relative_to(root).as_posix()


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    width: int
    height: int
    channels: int


def inspect_bytes(data: bytes, max_pixels: int) -> ImageInfo:
    """Hash and fully decode image bytes; raise ItemRejected with the reason when unusable."""
    if not data:
        raise ItemRejected("empty_file", "file is empty (0 bytes)")
    sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ItemRejected("not_an_image", "not a readable image format") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a reject, not a crash
        raise ItemRejected("not_an_image", f"cannot open image: {exc}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ItemRejected("too_many_pixels", f"{w}x{h} = {w * h} pixels exceeds the limit {max_pixels}")
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001
        raise ItemRejected("truncated_image", f"image data is truncated or corrupt: {exc}") from None
    return ImageInfo(sha, int(w), int(h), len(img.getbands()))


def read_file(path: Path) -> bytes:
    if not path.exists():
        raise ItemRejected("file_missing", f"{path} does not exist")
    if not path.is_file():
        raise ItemRejected("unreadable_file", f"{path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ItemRejected("unreadable_file", f"cannot read {path}: {exc}") from None
