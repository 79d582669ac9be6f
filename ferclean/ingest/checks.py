"""Per-item checks shared by all sources: path safety, file bytes, image header and decode."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ferclean.decode import UnusableImage, decode_image

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
    """Hash and fully decode image bytes (see ferclean.decode); raise ItemRejected when unusable.

    width/height are those of the upright image (EXIF orientation applied)."""
    sha = hashlib.sha256(data).hexdigest() if data else ""
    try:
        d = decode_image(data, max_pixels, pixels=False)
    except UnusableImage as exc:
        raise ItemRejected(exc.reason_code, exc.message) from None
    return ImageInfo(sha, d.width, d.height, d.channels)


def read_file(path: Path) -> bytes:
    if not path.exists():
        raise ItemRejected("file_missing", f"{path} does not exist")
    if not path.is_file():
        raise ItemRejected("unreadable_file", f"{path} is not a regular file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ItemRejected("unreadable_file", f"cannot read {path}: {exc}") from None
