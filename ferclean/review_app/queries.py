"""Read-side of the review app: queues, filters and one sample's details, over a catalog cursor.

Pure SQL + small dict shaping; no HTTP here. Every function takes an open DuckDB cursor whose
views are those of the run catalog (ferclean.review_app.db.MemoryCatalog).
"""

from __future__ import annotations

import math
import shlex
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from ferclean.classes import CANONICAL_CLASSES as CLASSES

#: Queue modes.
MODES = ("review", "audit")
#: Filters of /api/queue: query parameter -> item key (reason and quality_flag match list members).
FILTERS = ("label_original", "label_suggested", "reason", "quality_flag", "decided", "disagrees")

#: The review queue as `review_queue` orders it, plus samples a human already took out of it
#: (their model verdict is still review), those first, so progress survives a restart.
REVIEW_QUEUE_SQL = """
    SELECT sample_id FROM latest_verdicts
    WHERE action = 'review' OR (source = 'human' AND model_action = 'review')
    ORDER BY (source = 'human') DESC, priority DESC NULLS LAST, abs(margin) DESC NULLS LAST, sample_id"""


def jsonable(v: Any) -> Any:
    """A DuckDB value as JSON: timestamps ISO 8601, NaN None, lists recursively."""
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, bytes | bytearray | memoryview):
        return None
    return v


def _dicts(cur: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, (jsonable(x) for x in r), strict=True)) for r in cur.fetchall()]


def review_queue_ids(cur: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in cur.execute(REVIEW_QUEUE_SQL).fetchall()]


def run_classes(cur: duckdb.DuckDBPyConnection) -> list[str]:
    """The run's classes in canonical order: those of the model's class order, else those seen."""
    seen: set[str] = set()
    row = cur.execute("SELECT any_value(class_order) FROM predictions").fetchone() if _has_column(
        cur, "predictions", "class_order") else None
    if row and row[0]:
        seen = set(str(row[0]).split(","))
    if not seen:
        seen = {r[0] for r in cur.execute(
            "SELECT DISTINCT label_original FROM samples WHERE label_original IS NOT NULL UNION "
            "SELECT DISTINCT label_suggested FROM relabels WHERE label_suggested IS NOT NULL").fetchall()}
    return [c for c in CLASSES if c in seen] or list(CLASSES)


def _has_column(cur: duckdb.DuckDBPyConnection, view: str, column: str) -> bool:
    return bool(cur.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND column_name = ?",
                            [view, column]).fetchone()[0])


def queue_items(cur: duckdb.DuckDBPyConnection, ids: list[str]) -> list[dict[str, Any]]:
    """One summary per id, in `ids` order: labels, verdict, reasons, quality flags, human decision."""
    if not ids:
        return []
    cur.execute("""
        WITH q AS (SELECT unnest(?) AS sample_id, unnest(generate_series(1, len(?))) AS i)
        SELECT q.sample_id, coalesce(v.label_original, s.label_original) AS label_original,
               coalesce(v.model_label_suggested, v.label_suggested) AS label_suggested,
               v.source, v.action, v.label_final, v.reviewer, v.model_action,
               coalesce(v.model_disagrees_with_human, false) AS disagrees,
               coalesce(v.reasons, []) AS reasons, coalesce(f.quality_flags, []) AS quality_flags
        FROM q LEFT JOIN latest_verdicts v ON v.sample_id = q.sample_id
        LEFT JOIN samples s ON s.sample_id = q.sample_id
        LEFT JOIN (SELECT sample_id, any_value(quality_flags) AS quality_flags FROM faces WHERE is_primary
                   GROUP BY sample_id) f ON f.sample_id = q.sample_id
        ORDER BY q.i""", [ids, ids])
    items = _dicts(cur)
    for it in items:
        it["decided"] = it["source"] == "human"
        it["reasons"] = [r for r in it["reasons"] if r not in ("human_review",)]
    return items


def filter_items(items: list[dict[str, Any]], params: dict[str, str]) -> list[dict[str, Any]]:
    """Keep items matching every given filter (empty values are ignored)."""
    out = items
    for key in FILTERS:
        want = (params.get(key) or "").strip()
        if not want:
            continue
        if key == "reason":
            out = [i for i in out if want in i["reasons"]]
        elif key == "quality_flag":
            out = [i for i in out if want in i["quality_flags"]]
        elif key in ("decided", "disagrees"):
            flag = want.lower() in ("1", "true", "yes")
            out = [i for i in out if bool(i["decided" if key == "decided" else "disagrees"]) == flag]
        else:
            out = [i for i in out if i[key] == want]
    return out


def facets(items: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The values each filter can take over `items`, sorted."""
    return {
        "label_original": sorted({i["label_original"] for i in items if i["label_original"]}),
        "label_suggested": sorted({i["label_suggested"] for i in items if i["label_suggested"]}),
        "reason": sorted({r for i in items for r in i["reasons"]}),
        "quality_flag": sorted({f for i in items for f in i["quality_flags"]}),
    }


def sample_known(cur: duckdb.DuckDBPyConnection, sample_id: str) -> bool:
    return bool(cur.execute("SELECT count(*) FROM samples WHERE sample_id = ?", [sample_id]).fetchone()[0]
                or cur.execute("SELECT count(*) FROM relabels WHERE sample_id = ?", [sample_id]).fetchone()[0])


def sample_detail(cur: duckdb.DuckDBPyConnection, sample_id: str) -> dict[str, Any] | None:
    """Everything the page shows for one sample, or None when the id is unknown."""
    from ferclean.review import effective_stack, human_history

    if not sample_known(cur, sample_id):
        return None
    srow = _dicts(cur.execute("SELECT sample_id, split, label_original, source_path, width, height "
                              "FROM samples WHERE sample_id = ?", [sample_id]))
    sample = srow[0] if srow else {"sample_id": sample_id}
    sample["file_name"] = Path(sample.pop("source_path")).name if sample.get("source_path") else None
    vrow = _dicts(cur.execute("SELECT * FROM latest_verdicts WHERE sample_id = ?", [sample_id]))
    verdict = vrow[0] if vrow else None
    face = _dicts(cur.execute(
        "SELECT detector, quality_flags, yaw, pitch, roll, blur, crop_size FROM faces "
        "WHERE sample_id = ? AND is_primary LIMIT 1", [sample_id]))
    history = human_history(cur, sample_id)
    return {
        "sample": sample,
        "verdict": verdict,
        "probs": class_probs(cur, sample_id, verdict),
        "face": face[0] if face else None,
        "has_crop": bool(face),
        "duplicates": near_duplicates(cur, sample_id),
        "history": [jsonable(h) for h in history],
        "can_undo": bool(effective_stack(history)),
    }


def class_probs(cur: duckdb.DuckDBPyConnection, sample_id: str, verdict: dict[str, Any] | None) -> list[dict[str, Any]]:
    """[{class, p}] from `predictions` of the verdict's model method: an out-of-fold row first."""
    method = None
    if verdict:
        method = verdict.get("method") if verdict.get("source") != "human" else None
        if method is None:
            r = cur.execute("SELECT arg_max(method, decided_at) FROM relabels WHERE sample_id = ? AND source <> 'human'",
                            [sample_id]).fetchone()
            method = r[0] if r else None
    order = "class_order" if _has_column(cur, "predictions", "class_order") else "NULL"
    sql = (f"SELECT probs, {order} FROM predictions WHERE sample_id = ?"
           + (" AND method = ?" if method else "") + " ORDER BY (fold < 0), fold LIMIT 1")
    row = cur.execute(sql, [sample_id, method] if method else [sample_id]).fetchone()
    if not row:
        return []
    probs, class_order = row
    names = str(class_order).split(",") if class_order else list(CLASSES)[: len(probs)]
    return [{"class": c, "p": round(float(p), 4)} for c, p in zip(names, probs, strict=False)]


def near_duplicates(cur: duckdb.DuckDBPyConnection, sample_id: str) -> list[dict[str, Any]]:
    """Other members of the sample's duplicate clusters, with their label and issue type."""
    if not _has_column(cur, "dataset_issues", "cluster_id"):
        return []
    return _dicts(cur.execute("""
        WITH c AS (SELECT cluster_id, issue_type, score, unnest(sample_ids) AS member FROM dataset_issues
                   WHERE cluster_id IS NOT NULL AND list_contains(sample_ids, ?)
                     AND issue_type IN ('exact_duplicate', 'near_duplicate'))
        SELECT c.member AS sample_id, any_value(c.cluster_id) AS cluster_id, any_value(c.issue_type) AS issue_type,
               max(c.score) AS score, any_value(s.label_original) AS label_original,
               any_value(s.split) AS split
        FROM c LEFT JOIN samples s ON s.sample_id = c.member
        WHERE c.member <> ? GROUP BY c.member ORDER BY c.member LIMIT 24""", [sample_id, sample_id]))


def crop_png(cur: duckdb.DuckDBPyConnection, sample_id: str) -> bytes | None:
    row = cur.execute("SELECT crop_png FROM faces WHERE sample_id = ? AND is_primary LIMIT 1", [sample_id]).fetchone()
    return bytes(row[0]) if row and row[0] else None


def source_path(cur: duckdb.DuckDBPyConnection, sample_id: str) -> Path | None:
    """The sample's image file as the samples table knows it (never a path from the request)."""
    row = cur.execute("SELECT source_path FROM samples WHERE sample_id = ?", [sample_id]).fetchone()
    if not row or not row[0]:
        return None
    p = Path(row[0])
    return p if p.is_file() else None


def rerun_hint(cur: duckdb.DuckDBPyConnection, out: Path) -> dict[str, Any]:
    """audit_min and the command that re-runs the verdicts (from the latest completed curate run)."""
    import json

    from ferclean.relabel import RelabelConfig

    audit_min = RelabelConfig().audit_min
    row = cur.execute("SELECT config FROM runs WHERE kind = 'curate' AND status = 'completed' "
                      "ORDER BY finished_at DESC LIMIT 1").fetchone()
    cmd = f"ferclean curate DATA --out {shlex.quote(str(out))}"
    if row and row[0]:
        cfg = json.loads(row[0])
        audit_min = int(((cfg.get("configs") or {}).get("relabel") or {}).get("audit_min") or audit_min)
        if cfg.get("source"):
            cmd = f"ferclean curate {shlex.quote(str(cfg['source']))} --out {shlex.quote(str(out))}"
            if cfg.get("config_file"):
                cmd += f" --config {shlex.quote(str(cfg['config_file']))}"
            if cfg.get("limit"):
                cmd += f" --limit {int(cfg['limit'])}"
    return {"audit_min": audit_min, "command": cmd}


def audit_decisions(cur: duckdb.DuckDBPyConnection, classes: list[str]) -> int:
    """Audited samples whose latest human audit decision has a label among `classes`: the count
    `ferclean.relabel.audit_class_prior` compares with audit_min (drops and retractions do not count)."""
    from ferclean.review import AUDIT_REASON

    return int(cur.execute(f"""
        SELECT count(*) FROM (
            SELECT arg_max({{'label': label_final}}, (decided_at, run_id)).label AS label FROM relabels
            WHERE source = 'human' AND list_contains(reasons, '{AUDIT_REASON}') GROUP BY sample_id)
        WHERE label IN (SELECT unnest(?))""", [classes]).fetchone()[0])
