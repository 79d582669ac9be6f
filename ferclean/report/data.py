"""Read what the HTML report shows from the catalog and the run folders.

Each function returns plain Python/numpy data (or None when its inputs are not available), so the
rendering code never needs to know which stages have run.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from PIL import Image

from ferclean.classes import CANONICAL_CLASSES
from ferclean.store import Store

DROPPED = "(dropped)"
UNDECIDED = "(no label)"


def _views(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    return {r[0] for r in con.execute(f'DESCRIBE "{view}"').fetchall()}


def _class_order(labels: set[str]) -> list[str]:
    known = [c for c in CANONICAL_CLASSES if c in labels]
    return known + sorted(x for x in labels if x not in CANONICAL_CLASSES)


@dataclass
class Matrix:
    """A labelled 2-D table: values shape (len(rows), len(cols))."""

    rows: list[str]
    cols: list[str]
    values: np.ndarray


def verdict_counts(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
    """(action, source, n) over the latest verdicts, most frequent first."""
    return [
        (a, s, int(n))
        for a, s, n in con.execute(
            "SELECT action, source, count(*) AS n FROM latest_verdicts GROUP BY ALL ORDER BY n DESC"
        ).fetchall()
    ]


def human_decisions(con: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    """(samples whose verdict is a human decision, of those where a newer model run disagrees)."""
    n, dis = con.execute("SELECT count(*), count(*) FILTER (WHERE model_disagrees_with_human) "
                         "FROM latest_verdicts WHERE source = 'human'").fetchone()
    return int(n), int(dis)


def confusion(con: duckdb.DuckDBPyConnection) -> Matrix | None:
    """Original -> final label counts; drops and label-less verdicts get their own columns."""
    rows = con.execute("SELECT label_original, label_final, action, n FROM label_confusion").fetchall()
    if not rows:
        return None
    cells: dict[tuple[str, str], int] = {}
    for orig, final, action, n in rows:
        o = orig if orig is not None else UNDECIDED
        f = final if final is not None else (DROPPED if action == "drop" else UNDECIDED)
        cells[(o, f)] = cells.get((o, f), 0) + int(n)
    r = _class_order({k[0] for k in cells} - {UNDECIDED}) + ([UNDECIDED] if any(k[0] == UNDECIDED for k in cells) else [])
    labels = {k[1] for k in cells} - {DROPPED, UNDECIDED}
    c = _class_order(labels | {x for x in r if x != UNDECIDED})
    c += [x for x in (UNDECIDED, DROPPED) if any(k[1] == x for k in cells)]
    m = np.zeros((len(r), len(c)))
    for (o, f), n in cells.items():
        m[r.index(o), c.index(f)] = n
    return Matrix(r, c, m)


def flag_rates(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """noise_by_class rows as dicts, in canonical class order."""
    cur = con.execute("SELECT * FROM noise_by_class")
    names = [d[0] for d in cur.description]
    out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    order = _class_order({str(r["label_original"]) for r in out})
    return sorted(out, key=lambda r: order.index(str(r["label_original"])))


def au_cooccurrence(con: duckdb.DuckDBPyConnection) -> Matrix | None:
    """P(AU p | AU q) from the au_graph table: rows p, columns q; None when absent or empty."""
    if "au_graph" not in _views(con):
        return None
    rows = con.execute("SELECT au_p, au_q, p_given_q FROM au_graph").fetchall()
    if not rows:
        return None
    aus = sorted({r[0] for r in rows} | {r[1] for r in rows})
    m = np.full((len(aus), len(aus)), np.nan)
    for p, q, v in rows:
        if v is not None:
            m[aus.index(p), aus.index(q)] = float(v)
    return Matrix(aus, aus, m)


def au_prevalence(con: duckdb.DuckDBPyConnection, label_source: str = "original") -> Matrix | None:
    """Share of primary faces with each AU present, per class (rows) and AU (columns)."""
    if "au_prevalence_by_label" not in _views(con):
        return None
    rows = con.execute(
        "SELECT label, au, prevalence FROM au_prevalence_by_label WHERE label_source = ?", [label_source]
    ).fetchall()
    if not rows:
        return None
    labels = _class_order({r[0] for r in rows})
    aus = sorted({r[1] for r in rows})
    m = np.full((len(labels), len(aus)), np.nan)
    for lab, au, v in rows:
        m[labels.index(lab), aus.index(au)] = float(v)
    return Matrix(labels, aus, m)


@dataclass
class Curve:
    """One training curve file: x values and named numeric series of the same length (or shorter)."""

    title: str
    x: list[float]
    series: dict[str, list[float]] = field(default_factory=dict)


def _numeric_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
    )


#: Record keys that name a curve rather than a value on it.
GROUP_KEYS = ("method", "fold", "stage", "phase")


#: Series names worth plotting as training curves (substring match, lower case).
CURVE_WORDS = ("loss", "acc", "f1", "auc", "err", "precision", "recall")


def _plottable(name: str, values: list[float]) -> bool:
    """Loss-like series (any scale) and accuracy-like metrics in [0, 1]; schedules, counts and
    timings are left out."""
    n = name.lower()
    return "loss" in n or (any(w in n for w in CURVE_WORDS) and all(0.0 <= x <= 1.0 for x in values))


def _as_curve(title: str, doc: Any) -> list[Curve]:
    """Recognise columnar {name: [numbers]}, record [{epoch:.., loss:..}], or nested mappings."""
    if isinstance(doc, list) and len(doc) >= 2 and all(isinstance(r, dict) for r in doc):
        groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        segment: dict[tuple[str, ...], int] = {}
        last_epoch: dict[tuple[str, ...], float] = {}
        for r in doc:  # one curve per (method, fold) when the records say which
            key = tuple(f"{k}={r[k]}" for k in GROUP_KEYS if k in r)
            ep = r.get("epoch")
            if isinstance(ep, (int, float)) and key in last_epoch and ep <= last_epoch[key]:
                segment[key] = segment.get(key, 1) + 1  # epoch restarted: a new fold/run
            if isinstance(ep, (int, float)):
                last_epoch[key] = ep
            full = key + ((f"run {segment[key]}",) if key in segment else ())
            groups.setdefault(full, []).append(r)
        if len(groups) > 1:
            return [c for key, recs in groups.items() for c in _as_curve(f"{title} [{', '.join(key)}]", recs)]
        keys = [k for k in doc[0] if k not in GROUP_KEYS and all(
            isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in doc)]
        if keys:
            doc = {k: [float(r[k]) for r in doc] for k in keys}
    if not isinstance(doc, dict):
        return []
    cols = {k: v for k, v in doc.items() if _numeric_list(v)}
    xkey = next((k for k in ("epoch", "epochs", "step", "steps", "iteration") if k in cols), None)
    series = {k: [float(x) for x in v] for k, v in cols.items() if k != xkey}
    series = {k: v for k, v in series.items() if all(math.isfinite(x) for x in v) and _plottable(k, v)}
    out = []
    if series:
        n = max(len(v) for v in series.values())
        x = [float(v) for v in cols[xkey]] if xkey else [float(i + 1) for i in range(n)]
        out.append(Curve(title, x, series))
    for k, v in doc.items():
        if isinstance(v, (dict, list)) and not _numeric_list(v):
            out.extend(_as_curve(f"{title} / {k}", v))
    return out


def training_curves(store: Store, max_files: int = 20) -> list[Curve]:
    """Curves found in `OUT/runs/<run_id>/**/*.json` (newest runs first); [] when there are none."""
    runs_dir = store.root / "runs"
    if not runs_dir.exists():
        return []
    found: list[Curve] = []
    for run_dir in sorted((p for p in runs_dir.iterdir() if p.is_dir()), reverse=True):
        for f in sorted(run_dir.rglob("*.json")):
            if len(found) >= max_files:
                return found
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError, UnicodeDecodeError):
                continue
            found.extend(_as_curve(f"{run_dir.name} / {f.relative_to(run_dir)}", doc))
    return found[:max_files]


@dataclass
class Flagged:
    """One flagged sample for the contact sheet."""

    sample_id: str
    action: str
    label_original: str | None
    label_suggested: str | None
    alpha: float | None
    margin: float | None
    png: bytes | None  # aligned crop (or the source image, downscaled), PNG


def thumbnail_png(path: str | Path, size: int = 96) -> bytes | None:
    """The image at `path` shrunk to fit size x size, as PNG; None when it cannot be read."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy()
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue()
    except (OSError, ValueError):
        return None


def crops_for(con: duckdb.DuckDBPyConnection, sample_ids: list[str]) -> dict[str, bytes]:
    """sample_id -> primary aligned-crop PNG bytes, for the ids that have one."""
    if not sample_ids or "faces" not in _views(con) or not {"crop_png", "is_primary"} <= _columns(con, "faces"):
        return {}
    rows = con.execute(
        "SELECT sample_id, crop_png FROM faces WHERE is_primary AND sample_id IN (SELECT unnest(?))",
        [sample_ids],
    ).fetchall()
    return {sid: bytes(png) for sid, png in rows if png}


def source_paths(con: duckdb.DuckDBPyConnection, sample_ids: list[str]) -> dict[str, str]:
    """sample_id -> source_path from `samples`."""
    if not sample_ids:
        return {}
    rows = con.execute(
        "SELECT sample_id, source_path FROM samples WHERE sample_id IN (SELECT unnest(?))", [sample_ids]
    ).fetchall()
    return dict(rows)


def top_flagged(con: duckdb.DuckDBPyConnection, n: int = 24) -> list[Flagged]:
    """The `n` flagged samples (latest action other than keep) with the highest review priority
    (then largest |margin|), each with its aligned crop, else its source image."""
    rows = con.execute(
        """SELECT sample_id, action, label_original, label_suggested, alpha, margin
           FROM latest_verdicts WHERE action <> 'keep'
           ORDER BY priority DESC NULLS LAST, abs(margin) DESC NULLS LAST, sample_id LIMIT ?""",
        [n],
    ).fetchall()
    ids = [r[0] for r in rows]
    crops = crops_for(con, ids)
    paths = source_paths(con, [i for i in ids if i not in crops])
    out = []
    for sid, action, lo, ls, a, m in rows:
        png = crops.get(sid) or (thumbnail_png(paths[sid]) if sid in paths else None)
        out.append(Flagged(sid, action, lo, ls, None if a is None else float(a), None if m is None else float(m), png))
    return out
