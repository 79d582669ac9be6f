"""Cleaned export: final labels -> an ImageFolder tree or a manifest CSV (the `export` stage).

Final label per sample: its latest verdict's `label_final` (view latest_verdicts); samples
without a verdict keep `label_original`. Samples whose latest action is `drop`, or that end with
no label, are left out (counted in the summary).

Layouts (both write `DIR/manifest.csv`):

- `folder`: files copied to `DIR/<split>/<label>/<name>` (torchvision ImageFolder per split);
  with `crops=True` the primary aligned face crop (PNG) is written instead of the source file.
  manifest `path` is relative to DIR.
- `manifest`: no copies; `path` is the source file's absolute path, or with `crops=True` a crop
  written to `DIR/crops/<name>.png`.

Soft labels, when available: `soft_<class>` = FER+ votes / sum of class votes (samples with
vote columns), and `prob_<class>` = the mean out-of-fold model probabilities (predictions with
fold >= 0 of the verdict's method; fold -1 when there are no out-of-fold rows), class order from
the predicting run's config.

Missing source files and missing crops become `rejects` (stage export: file_missing, no_face).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ferclean.au_view import AU_VIEW_METHOD
from ferclean.catalog import connect
from ferclean.classes import CANONICAL_CLASSES, FER7, FERPLUS_VOTE_COLUMNS
from ferclean.progress import track
from ferclean.review import safe_name
from ferclean.runs import Run
from ferclean.store import Store

MARKER = ".ferclean-export"


class ExportConfig(BaseModel):
    """Settings of the export stage."""

    model_config = ConfigDict(extra="forbid")

    to: str | None = Field(None, description="destination folder; default OUT/export")
    layout: Literal["folder", "manifest"] = Field("folder", description="ImageFolder tree or manifest CSV only")
    crops: bool = Field(False, description="write the primary aligned face crop instead of the source image")
    splits: list[str] | None = Field(None, description="only these splits (default: all)")
    soft_labels: bool = Field(True, description="add soft_<class> (FER+ votes) and prob_<class> (model) columns")


FINAL_SQL = """
    SELECT s.sample_id, s.split, s.source_path, s.label_original,
           CASE WHEN v.sample_id IS NULL THEN s.label_original ELSE v.label_final END AS label,
           coalesce(v.action, 'unreviewed') AS action, v.source AS decided_by, v.method AS method
    FROM samples s LEFT JOIN latest_verdicts v ON s.sample_id = v.sample_id
    ORDER BY s.split, s.sample_id"""


def find_classes(config: Any) -> list[str] | None:
    """The first `classes` list of class names found anywhere in a run config (depth first)."""
    if isinstance(config, dict):
        c = config.get("classes")
        if isinstance(c, list) and c and all(isinstance(x, str) for x in c):
            return c
        for v in config.values():
            found = find_classes(v)
            if found:
                return found
    elif isinstance(config, list):
        for v in config:
            found = find_classes(v)
            if found:
                return found
    return None


def vote_soft_labels(votes: dict[str, Any]) -> dict[str, float] | None:
    """FER+ vote counts (vote column -> count) -> canonical class -> share of class votes.

    `unknown`/`NF` votes are ignored; None when no class vote is present.
    """
    counts = {FERPLUS_VOTE_COLUMNS[k]: float(v) for k, v in votes.items()
              if k in FERPLUS_VOTE_COLUMNS and v is not None}
    total = sum(counts.values())
    if total <= 0:
        return None
    return {c: n / total for c, n in counts.items()}


def _prepare_dest(dest: Path) -> None:
    """Create `dest`, or empty it when it holds an earlier export; refuse other non-empty folders."""
    if dest.exists() and any(dest.iterdir()):
        if not (dest / MARKER).exists():
            raise FileExistsError(f"{dest} is not empty and is not an earlier ferclean export; choose another --to")
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MARKER).write_text("written by ferclean export; the folder is replaced on the next export\n")


def _model_probs(con: Any, rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, np.ndarray]]:
    """(class order, sample_id -> mean probability vector) for the rows' verdict methods."""
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    if "predictions" not in views or not con.execute("SELECT count(*) FROM predictions").fetchone()[0]:
        return [], {}
    configs = {rid: cfg for rid, cfg in con.execute("SELECT run_id, config FROM runs").fetchall()}
    preds = con.execute(
        """SELECT sample_id, method, fold, probs, run_id FROM predictions
           QUALIFY fold >= 0 OR max(fold) OVER (PARTITION BY sample_id, method) < 0"""
    ).fetchall()
    wanted = {r["sample_id"]: r["method"] for r in rows}
    methods = Counter(m for _s, m, *_ in preds if m != AU_VIEW_METHOD)  # the AU view is an aid to verdicts, not a model
    default_method = methods.most_common(1)[0][0] if methods else None
    acc: dict[str, list[np.ndarray]] = {}
    order: list[str] | None = None
    for sid, method, _fold, probs, run_id in preds:
        if sid not in wanted or method != (wanted[sid] if wanted[sid] in methods else default_method):
            continue
        if order is None:
            try:
                order = find_classes(json.loads(configs.get(run_id) or "{}"))
            except ValueError:
                order = None
            if order is None:
                order = list(FER7) if len(probs) == len(FER7) else list(CANONICAL_CLASSES)[: len(probs)]
        acc.setdefault(sid, []).append(np.asarray(probs, dtype=np.float64))
    return order or [], {sid: np.mean(v, axis=0) for sid, v in acc.items()}


def run_export(store: Store, run: Run, config: ExportConfig, progress: bool = True) -> dict[str, Any]:
    """Write the cleaned dataset (see module docstring); returns counts and the manifest path."""
    dest = Path(config.to).expanduser().resolve() if config.to else store.root / "export"
    con = connect(store)
    try:
        cur = con.execute(FINAL_SQL)
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        if config.splits:
            rows = [r for r in rows if r["split"] in set(config.splits)]
        excluded = Counter("dropped" if r["action"] == "drop" else "no_label" for r in rows
                           if r["action"] == "drop" or r["label"] is None)
        rows = [r for r in rows if r["action"] != "drop" and r["label"] is not None]
        ids = [r["sample_id"] for r in rows]
        vote_cols = [c for c in FERPLUS_VOTE_COLUMNS
                     if c in {d[0] for d in con.execute("DESCRIBE samples").fetchall()}]
        votes: dict[str, dict[str, Any]] = {}
        if config.soft_labels and vote_cols:
            sel = ", ".join(f'"{c}"' for c in vote_cols)
            for rec in con.execute(f"SELECT sample_id, {sel} FROM samples").fetchall():
                votes[rec[0]] = dict(zip(vote_cols, rec[1:], strict=True))
        order, probs = _model_probs(con, rows) if config.soft_labels else ([], {})
        crops: dict[str, bytes] = {}
        if config.crops:
            from ferclean.report.data import crops_for

            crops = crops_for(con, ids)
    finally:
        con.close()

    _prepare_dest(dest)
    soft_classes = [c for c in CANONICAL_CLASSES if c in set(FERPLUS_VOTE_COLUMNS.values())] if votes else []
    header = ["sample_id", "split", "label", "label_original", "action", "decided_by", "path", "source_path"]
    header += [f"soft_{c}" for c in soft_classes] + [f"prob_{c}" for c in order]
    written: Counter[str] = Counter()
    manifest = dest / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in track(rows, "export", total=len(rows), enabled=progress):
            sid = r["sample_id"]
            if config.crops:
                if sid not in crops:
                    run.reject(sid, "export", "no_face", "no primary aligned crop in faces")
                    continue
                name = safe_name(sid, ".png")
            else:
                src = Path(r["source_path"])
                if not src.is_file():
                    run.reject(sid, "export", "file_missing", f"source file {src} is missing")
                    continue
                name = safe_name(sid, src.suffix.lower() or ".img")
            if config.layout == "folder":
                rel = Path(r["split"]) / r["label"] / name
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if config.crops:
                    target.write_bytes(crops[sid])
                else:
                    shutil.copyfile(r["source_path"], target)
                path = rel.as_posix()
            elif config.crops:
                target = dest / "crops" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(crops[sid])
                path = str(target)
            else:
                path = r["source_path"]
            soft = vote_soft_labels(votes[sid]) if sid in votes else None
            p = probs.get(sid)
            w.writerow(
                [sid, r["split"], r["label"], r["label_original"] or "", r["action"], r["decided_by"] or "", path,
                 r["source_path"]]
                + [("" if soft is None else f"{soft.get(c, 0.0):.4f}") for c in soft_classes]
                + [("" if p is None else f"{float(x):.4f}") for x in (p if p is not None else [None] * len(order))]
            )
            written[f"{r['split']}/{r['label']}"] += 1
    n = sum(written.values())
    run.counts["export.written"] += n
    for k, v in excluded.items():
        run.counts[f"export.excluded.{k}"] += v
    return {
        "to": str(dest), "layout": config.layout, "crops": config.crops, "written": n,
        "excluded": dict(excluded), "per_split_label": dict(sorted(written.items())),
        "soft_label_columns": bool(soft_classes), "prob_columns": bool(order), "manifest": str(manifest),
    }
