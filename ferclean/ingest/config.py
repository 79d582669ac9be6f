"""Ingest configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from ferclean.classes import CANONICAL_CLASSES, parse_class_list

SourceFormat = Literal["auto", "folder", "manifest", "fer2013-csv"]


class IngestConfig(BaseModel):
    """How to read a collection into the `samples` table."""

    source: str = Field(description="image folder, CSV manifest, or FER2013 pixel CSV")
    format: SourceFormat = Field("auto", description="auto: folder if a directory; a CSV with a "
                                 "`pixels` column is fer2013-csv, else manifest")
    labels: str | None = Field(None, description="FER+ vote file joined by row order (fer2013-csv only)")
    root: str | None = Field(None, description="root for manifest image paths (default: the manifest's folder)")
    collection: str | None = Field(None, description="collection name (default: derived from the source)")
    classes: tuple[str, ...] = Field(CANONICAL_CLASSES, description="class list; other labels are rejected")
    unlabelled: bool | None = Field(None, description="folder without label sub-folders; None = detect")
    default_split: str = Field("train", description="split for rows that name none")
    limit: int | None = Field(None, ge=1, description="stop after this many input rows/files")
    shard_size: int = Field(5000, ge=1, description="rows per Parquet part (bounds memory)")
    max_pixels: int = Field(40_000_000, ge=1, description="reject images with more pixels (decompression bombs)")
    max_reject_share: float = Field(
        1.0, ge=0.0, le=1.0,
        description="stop the run (exit 2) when more than this share of input rows is rejected; the "
                    "default 1.0 stops only when no row is usable. Example: 0.5 stops a run that "
                    "rejects more than half its input")

    @field_validator("classes", mode="before")
    @classmethod
    def _classes(cls, v: object) -> tuple[str, ...]:
        return parse_class_list(v)  # type: ignore[arg-type]
