"""Read OpenFace 2.0 FeatureExtraction / FaceLandmarkImg CSVs into `aus` columns.

OpenFace writes `AUxx_r` (0-5 intensity) and `AUxx_c` (0/1 presence, plus AU28_c) with a
leading space in every header; `face_id` (images) or `frame` (videos / image folders) identify
rows and `success` flags tracking failures (their AUs become null here).

Matching rows to sample ids (:func:`match_openface`):
- a folder of CSVs, one per image, named after the image stem (FaceLandmarkImg's layout):
  file stem -> the sample whose `source_path` (or `sample_id`) stem equals it;
- one CSV with a column `sample_id`, or `input`/`file`/`filename`/`image` holding a path whose
  stem matches as above;
- one CSV of a frame sequence (`frame` column, 1-based): frame k -> the k-th sample in
  `sample_id` order (FeatureExtraction -fdir over a folder listed in that order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ferclean.aus.names import AU28_C, AU_NAMES

_PATH_COLUMNS = ("sample_id", "input", "file", "filename", "image", "image_path")


def read_openface_csv(path: str | Path) -> pd.DataFrame:
    """One OpenFace CSV with stripped header names and only the columns ferclean uses.

    Returns columns: face_id (int), frame (int or absent), success (0/1), every AUxx_r / AUxx_c
    that exists, and any of the path/id columns listed in this module's docstring.
    """
    df = pd.read_csv(path, skipinitialspace=True)
    df.columns = [c.strip() for c in df.columns]
    keep = [c for c in df.columns if c in ("face_id", "frame", "success", *_PATH_COLUMNS)
            or (c.startswith("AU") and c[-2:] in ("_r", "_c"))]
    df = df[keep].copy()
    if "face_id" not in df.columns:
        df["face_id"] = 0
    if "success" not in df.columns:
        df["success"] = 1
    if not any(c.startswith("AU") for c in df.columns):
        raise ValueError(f"{path}: no AUxx_r / AUxx_c columns; is this an OpenFace CSV?")
    return df


def _stem(p: object) -> str:
    return Path(str(p)).stem


def match_openface(source: str | Path, samples: pd.DataFrame) -> pd.DataFrame:
    """OpenFace rows matched to `samples` (columns sample_id, source_path).

    Returns a frame with sample_id, face_index and the AU columns (see the module docstring for
    the matching rules). Rows that match no sample are dropped; `attrs["unmatched"]` counts them.
    """
    source = Path(source)
    by_stem: dict[str, str] = {}
    for sid, sp in zip(samples["sample_id"], samples["source_path"], strict=True):
        by_stem.setdefault(_stem(sp), sid)
        by_stem.setdefault(_stem(sid), sid)
    ids = set(samples["sample_id"])
    if source.is_dir():
        parts = []
        for f in sorted(source.glob("*.csv")):
            d = read_openface_csv(f)
            d["sample_id"] = by_stem.get(f.stem)
            parts.append(d)
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["sample_id", "face_id"])
    else:
        df = read_openface_csv(source)
        col = next((c for c in _PATH_COLUMNS if c in df.columns), None)
        if col == "sample_id":
            df["sample_id"] = [s if s in ids else by_stem.get(_stem(s)) for s in df["sample_id"]]
        elif col is not None:
            df["sample_id"] = [by_stem.get(_stem(s)) for s in df[col]]
        elif "frame" in df.columns:
            order = sorted(ids)
            df["sample_id"] = [order[k - 1] if 1 <= k <= len(order) else None for k in df["frame"].astype(int)]
        else:
            raise ValueError(f"{source}: cannot match rows to samples (no sample_id/input/frame column)")
    unmatched = int(df["sample_id"].isna().sum())
    df = df[df["sample_id"].notna()].copy()
    df["face_index"] = df["face_id"].astype(int)
    df = df.drop_duplicates(["sample_id", "face_index"], keep="first")
    out = pd.DataFrame({"sample_id": df["sample_id"].astype(str), "face_index": df["face_index"]})
    ok = df["success"].astype(float).to_numpy() > 0
    for a in AU_NAMES:
        r = df[f"{a}_r"].astype(float).to_numpy() if f"{a}_r" in df else np.full(len(df), np.nan)
        c = df[f"{a}_c"].astype(float).to_numpy() if f"{a}_c" in df else np.full(len(df), np.nan)
        out[f"{a}_r"] = np.where(ok, np.clip(r, 0, 5), np.nan).astype(np.float32)
        out[f"{a}_c"] = pd.array(np.where(ok, (c >= 0.5).astype(float), np.nan), dtype="Int8")
        out.loc[np.isnan(c) | ~ok, f"{a}_c"] = pd.NA
    c28 = df[AU28_C].astype(float).to_numpy() if AU28_C in df else np.full(len(df), np.nan)
    out[AU28_C] = pd.array(np.where(ok & ~np.isnan(c28), (c28 >= 0.5).astype(float), np.nan), dtype="Int8")
    out.loc[np.isnan(c28) | ~ok, AU28_C] = pd.NA
    out.attrs["unmatched"] = unmatched
    return out.reset_index(drop=True)
