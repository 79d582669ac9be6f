"""Readers that turn a source into a stream of input items (one per file or CSV data row).

Every item becomes exactly one `samples` row or one `rejects` row downstream; readers never drop
anything. A reader reports an item it cannot interpret by setting `error`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ferclean.classes import FER2013_CODES, normalize_label
from ferclean.ingest.checks import SPLIT_SYNONYMS, ItemRejected, normalize_split, resolve_inside, sample_id_for

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
PATH_COLUMNS = ("image_path", "path", "file", "filename", "image")
LABEL_COLUMNS = ("label", "emotion", "expression", "class")
RESERVED = {"sample_id", "source_path", "content_sha256", "split", "label_original", "label_raw",
            "collection", "width", "height", "channels", "source_row", "run_id"}


@dataclass
class Item:
    """One input row/file."""

    source_ref: str
    sample_id: str | None = None
    path: Path | None = None
    data: bytes | None = None
    label_raw: str | None = None
    split: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    source_row: int | None = None
    error: ItemRejected | None = None


class SourceError(Exception):
    """The source as a whole is unusable (missing root, unreadable manifest, bad columns)."""


class TooManyRejects(SourceError):
    """Ingest left no usable sample (or more rejects than `max_reject_share` allows): the run stops
    before any later stage. The message is one line: counts, the dominant reason with an example,
    and the fix."""


# -- folders ----------------------------------------------------------------------------------
def _walk_files(root: Path) -> Iterator[Path]:
    """Every non-hidden file below root in sorted order; symlinked dirs are yielded as entries."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        # A symlinked directory is not descended into; report it as an entry so it is not lost.
        for d in list(dirnames):
            if (base / d).is_symlink():
                dirnames.remove(d)
                yield base / d
        for name in sorted(filenames):
            if not name.startswith("."):
                yield base / name


def _is_label(name: str, classes: tuple[str, ...]) -> bool:
    try:
        return normalize_label(name, classes) is not None
    except ValueError:
        return False


def detect_unlabelled(root: Path, classes: tuple[str, ...]) -> bool:
    """A folder is labelled when a top-level (or split-level) sub-folder names a class."""
    for child in root.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            if _is_label(child.name, classes):
                return False
            if child.name.lower() in SPLIT_SYNONYMS:
                if any(g.is_dir() and _is_label(g.name, classes) for g in child.iterdir()):
                    return False
    return True


def iter_folder(root: Path, classes: tuple[str, ...], unlabelled: bool | None) -> Iterator[Item]:
    """`ROOT/<label>/*`, `ROOT/<split>/<label>/*`, or (unlabelled) any files below ROOT."""
    if unlabelled is None:
        unlabelled = detect_unlabelled(root, classes)
    for path in _walk_files(root):
        rel = path.relative_to(root).as_posix()
        item = Item(source_ref=rel, sample_id=rel)
        try:
            item.path = resolve_inside(root, rel)
            parts = rel.split("/")[:-1]
            if parts and parts[0].lower() in SPLIT_SYNONYMS:
                item.split = normalize_split(parts[0])
                parts = parts[1:]
            if not unlabelled:
                if not parts:
                    raise ItemRejected("unknown_label", "file is not inside a label folder")
                item.label_raw = parts[0]
            elif parts and _is_label(parts[0], classes):
                item.label_raw = parts[0]  # a weak label given by the folder name
        except ItemRejected as exc:
            item.error = exc
        yield item


# -- CSV manifests ------------------------------------------------------------------------------
def _infer(values: list[str]) -> str:
    """Column type from sample values: int, float, bool or string (empty strings are nulls)."""
    vals = [v for v in values if v not in ("", None)]
    if not vals:
        return "string"
    for kind, conv in (("int", int), ("float", float)):
        try:
            for v in vals:
                conv(v)
            return kind
        except ValueError:
            pass
    if all(v.lower() in ("true", "false") for v in vals):
        return "bool"
    return "string"


def convert(value: str | None, kind: str) -> Any:
    """Convert a CSV text value to the column's inferred type; raise ValueError if it does not fit."""
    if value is None or value == "":
        return None
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        low = value.lower()
        if low not in ("true", "false"):
            raise ValueError(f"{value!r} is not true/false")
        return low == "true"
    return value


def _open_csv(path: Path) -> tuple[io.TextIOWrapper, list[str]]:
    try:
        fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc}") from None
    header = next(csv.reader(fh), None)
    if not header:
        fh.close()
        raise SourceError(f"{path} is empty or has no header row")
    fh.seek(0)
    return fh, [h.strip() for h in header]


def sniff_columns(path: Path) -> list[str]:
    fh, header = _open_csv(path)
    fh.close()
    return header


def _column_types(path: Path, columns: list[str], n: int = 2000) -> dict[str, str]:
    fh, _ = _open_csv(path)
    with fh:
        reader = csv.DictReader(fh)
        rows = [r for _, r in zip(range(n), reader, strict=False)]
    return {c: _infer([r.get(c) for r in rows if isinstance(r.get(c), str)]) for c in columns}


def iter_manifest(manifest: Path, root: Path) -> Iterator[Item]:
    """CSV with an image path column (relative to `root`), optional label/split/sample_id."""
    header = sniff_columns(manifest)
    lower = {h.lower(): h for h in header}
    path_col = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
    if path_col is None:
        raise SourceError(f"{manifest}: no image path column (expected one of {', '.join(PATH_COLUMNS)})")
    label_col = next((lower[c] for c in LABEL_COLUMNS if c in lower), None)
    split_col = lower.get("split") or lower.get("usage")
    id_col = lower.get("sample_id")
    used = {path_col, label_col, split_col, id_col}
    extra_cols = [h for h in header if h not in used and h]
    clash = [h for h in extra_cols if h in RESERVED]
    if clash:
        raise SourceError(f"{manifest}: columns {clash} are reserved names in the samples table")
    kinds = _column_types(manifest, extra_cols)
    fh, _ = _open_csv(manifest)
    with fh:
        reader = csv.DictReader(fh, fieldnames=header)
        next(reader)  # header
        for i, row in enumerate(reader):
            ref = f"{manifest.name}:row {i + 1}"
            item = Item(source_ref=ref, source_row=i)
            try:
                if None in row:
                    raise ItemRejected("malformed_row", f"{len(header) + len(row[None])} fields, header has {len(header)}")
                if any(v is None for v in row.values()):
                    raise ItemRejected("malformed_row", f"fewer fields than the header's {len(header)}")
                rel = row[path_col].strip()
                item.source_ref = f"{ref} ({rel})" if rel else ref
                item.path = resolve_inside(root, rel)
                item.sample_id = (row[id_col].strip() if id_col else "") or sample_id_for(root, rel, item.path)
                item.label_raw = row[label_col] if label_col else None
                item.split = normalize_split(row[split_col]) if split_col and row[split_col].strip() else None
                for c in extra_cols:
                    try:
                        item.extras[c] = convert(row[c], kinds[c])
                    except ValueError:
                        raise ItemRejected("malformed_row", f"column {c!r}: {row[c]!r} is not {kinds[c]}") from None
            except ItemRejected as exc:
                item.error = exc
            yield item


def manifest_extra_types(manifest: Path) -> dict[str, str]:
    header = sniff_columns(manifest)
    lower = {h.lower(): h for h in header}
    path_col = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
    label_col = next((lower[c] for c in LABEL_COLUMNS if c in lower), None)
    used = {path_col, label_col, lower.get("split") or lower.get("usage"), lower.get("sample_id")}
    extra = [h for h in header if h not in used and h]
    return _column_types(manifest, extra)


# -- FER2013 pixel CSV ------------------------------------------------------------------------
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                   "contempt", "unknown", "NF")


def read_ferplus_votes(path: Path) -> list[dict[str, int | None]]:
    """FER+ `fer2013new.csv`: one row per FER2013 row, in order; returns the vote columns."""
    fh, header = _open_csv(path)
    missing = [c for c in FERPLUS_COLUMNS if c not in header]
    if missing:
        fh.close()
        raise SourceError(f"{path}: not a FER+ vote file (missing columns {missing})")
    out: list[dict[str, int | None]] = []
    with fh:
        for row in csv.DictReader(fh):
            out.append({c: (int(row[c]) if row[c] not in (None, "") else None) for c in FERPLUS_COLUMNS})
    return out


def iter_fer2013_csv(path: Path, media_dir: Path, votes: list[dict[str, int | None]] | None) -> Iterator[Item]:
    """`emotion,pixels,Usage` rows; each image is written as PNG under `media_dir`."""
    header = sniff_columns(path)
    for col in ("emotion", "pixels"):
        if col not in header:
            raise SourceError(f"{path}: a FER2013 CSV needs columns emotion, pixels (and Usage); found {header}")
    media_dir.mkdir(parents=True, exist_ok=True)
    fh, _ = _open_csv(path)
    with fh:
        reader = csv.DictReader(fh)
        for i, row in enumerate(reader):
            item = Item(source_ref=f"{path.name}:row {i + 1}", sample_id=f"{path.stem}/{i:07d}", source_row=i)
            try:
                if None in row or any(v is None for v in row.values()):
                    raise ItemRejected("malformed_row", "wrong number of fields")
                code = row["emotion"].strip()
                if not code.isdigit() or int(code) >= len(FER2013_CODES):
                    raise ItemRejected("unknown_label", f"emotion code {code!r} is not 0-6")
                item.label_raw = FER2013_CODES[int(code)]
                item.split = normalize_split(row["Usage"]) if row.get("Usage") else None
                try:
                    px = np.array(row["pixels"].split(), dtype=np.int64)
                except ValueError:
                    raise ItemRejected("malformed_row", "pixels are not integers") from None
                side = int(round(len(px) ** 0.5))
                if side * side != len(px) or side == 0 or px.min() < 0 or px.max() > 255:
                    raise ItemRejected("malformed_row", f"{len(px)} pixel values do not form a square 8-bit image")
                buf = io.BytesIO()
                Image.fromarray(px.reshape(side, side).astype(np.uint8), mode="L").save(buf, format="PNG")
                item.data = buf.getvalue()
                dest = media_dir / f"{i:07d}.png"
                if not dest.exists():
                    tmp = dest.with_suffix(".tmp")
                    tmp.write_bytes(item.data)
                    os.replace(tmp, dest)
                item.path = dest
                if votes is not None:
                    item.extras = dict(votes[i]) if i < len(votes) else {c: None for c in FERPLUS_COLUMNS}
            except ItemRejected as exc:
                item.error = exc
            yield item
