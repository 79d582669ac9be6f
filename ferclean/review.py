"""Human review round-trip: export the review queue as a CSV + thumbnails, import decisions.

`ferclean review export OUT [--to DIR]` writes `DIR/review_queue.csv` (one row per sample in the
`review_queue` view, highest priority first) and `DIR/thumbnails/*.png` (the aligned face crop,
else the source image). The decision columns are empty; a reviewer fills them in:

- `decision`: keep | relabel | drop (empty = not decided, the row is skipped);
- `decision_label`: the new label for `relabel` (empty = accept `label_suggested`); must be
  empty or equal to `label_original` for keep, empty for drop;
- `comment`: free text, stored with the decision.

`ferclean review import OUT decisions.csv --reviewer NAME` validates every row first and applies
nothing when any row is bad: it raises :class:`DecisionError` listing each bad row (CSV line
number, sample id, problem), and records them as `rejects` (stage review, invalid_decision) of
a failed `review-import` run. When all rows are valid it appends one `relabels` row per decided
sample with source = human, the reviewer and decided_at = now, under a new `review-import` run;
`latest_verdicts` then shows the human decision, and keeps showing it after later model runs
(human decisions are final, see ferclean.views).

The review app (`ferclean review serve`, ferclean.review_app) goes through the same validation one
decision at a time: :func:`decide_one` appends one human row under its own `review-app` run,
:func:`undo_one` appends a row that restates the previous human decision or retracts.
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from ferclean.catalog import connect
from ferclean.classes import normalize_label
from ferclean.report.data import crops_for, source_paths, thumbnail_png
from ferclean.runs import open_run
from ferclean.store import Store

QUEUE_FILE = "review_queue.csv"
THUMB_DIR = "thumbnails"
#: Columns of the exported CSV, in order; the last three are for the reviewer.
CSV_COLUMNS = (
    "sample_id", "label_original", "label_suggested", "model_action", "alpha", "margin", "priority",
    "reasons", "thumbnail", "decision", "decision_label", "comment",
)
DECISIONS = ("keep", "relabel", "drop")
AUDIT_FILE = "audit_queue.csv"
AUDIT_REASON = "audit"  # in `reasons` of an audit row, and of the human verdicts imported from it


def safe_name(sample_id: str, suffix: str = ".png") -> str:
    """A file name for a sample id (which may hold '/'): readable part + 8 hex of its SHA-1."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", sample_id).strip("._")[-80:] or "sample"
    return f"{stem}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}{suffix}"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def export_review_queue(
    store: Store, to: str | Path | None = None, limit: int | None = None, thumb_size: int = 128,
    audit: int | None = None, seed: int = 0,
) -> dict[str, Any]:
    """Write the review queue CSV and thumbnails to `to` (default `OUT/review/`, `OUT/audit/` for audits).

    With `audit=N`, write instead `audit_queue.csv`: N labelled samples drawn uniformly at random
    (seeded), whatever their verdict, with reasons = 'audit'. Their imported decisions are an
    unbiased sample of the true labels: the relabel stage uses their class mix as the reference
    class prior of the bayes rule (`RelabelConfig.audit_prior`), the one thing the collection's
    own labels cannot tell it (e.g. FER2013 under-labels neutral: 17.6 % vs 35 % by the crowd).

    Returns {"csv": path, "thumbnails": folder, "rows": n, "missing_images": n}.
    """
    dest = Path(to) if to else store.root / ("audit" if audit else "review")
    thumbs = dest / THUMB_DIR
    if (dest / (AUDIT_FILE if audit else QUEUE_FILE)).exists():  # an earlier export: no stale thumbnails
        for old in thumbs.glob("*.png"):
            old.unlink()
    thumbs.mkdir(parents=True, exist_ok=True)
    con = connect(store)
    try:
        cols = "sample_id, label_original, label_suggested, action, alpha, margin, priority, reasons"
        if audit:
            rows = [(*r[:7], [AUDIT_REASON]) for r in audit_draw(con, audit, seed, cols)]
        else:
            rows = con.execute(f"SELECT {cols} FROM review_queue" + (f" LIMIT {int(limit)}" if limit else "")).fetchall()
        ids = [r[0] for r in rows]
        crops = crops_for(con, ids)
        paths = source_paths(con, [i for i in ids if i not in crops])
    finally:
        con.close()
    missing = 0
    csv_path = dest / (AUDIT_FILE if audit else QUEUE_FILE)
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for sid, lo, ls, action, alpha, margin, prio, reasons in rows:
            png = thumbnail_png_bytes(crops[sid], thumb_size) if sid in crops else (
                thumbnail_png(paths[sid], thumb_size) if sid in paths else None)
            rel = ""
            if png:
                rel = f"{THUMB_DIR}/{safe_name(sid)}"
                (dest / rel).write_bytes(png)
            else:
                missing += 1
            w.writerow([sid, _fmt(lo), _fmt(ls), action, _fmt(alpha), _fmt(margin), _fmt(prio),
                        ";".join(reasons or []), rel, "", "", ""])
    return {"csv": str(csv_path), "thumbnails": str(thumbs), "rows": len(rows), "missing_images": missing}


def audit_draw(con: Any, n: int, seed: int = 0, cols: str = "sample_id") -> list[tuple]:
    """The seeded audit sample: `n` labelled samples drawn uniformly at random (rows of `cols` from
    latest_verdicts; from `samples` when there are no verdicts yet, the missing columns NULL).
    The same store and seed give the same draw (the review app and `review export --audit`)."""
    rows = con.execute(f"SELECT {cols} FROM latest_verdicts WHERE label_original IS NOT NULL "
                       "ORDER BY sample_id").fetchall()
    if not rows:  # no verdicts yet: audit the labelled samples
        width = len(cols.split(","))
        rows = [(r[0], r[1], *([None] * (width - 2)))[:width] for r in con.execute(
            "SELECT sample_id, label_original FROM samples WHERE label_original IS NOT NULL ORDER BY sample_id"
        ).fetchall()]
    return random.Random(seed).sample(rows, min(int(n), len(rows)))


def thumbnail_png_bytes(png: bytes, size: int) -> bytes:
    """Shrink PNG bytes to fit size x size (via a temporary in-memory file)."""
    import io

    return thumbnail_png(io.BytesIO(png), size) or png


# -- import ------------------------------------------------------------------------------------
@dataclass
class Decision:
    """One validated decision: action in DECISIONS, label_final None for drop."""

    line: int
    sample_id: str
    action: str
    label_final: str | None
    comment: str | None
    audit: bool = False  # the row came from an audit sample (`export_review_queue(audit=N)`)
    extra_reasons: list[str] = field(default_factory=list)  # e.g. undo / retracted (the review app's undo)


@dataclass
class RowError:
    line: int
    sample_id: str
    problem: str

    def __str__(self) -> str:
        return f"line {self.line} ({self.sample_id or 'no sample_id'}): {self.problem}"


class DecisionError(ValueError):
    """Some decision rows are invalid; nothing was applied. `.errors` lists them."""

    def __init__(self, errors: list[RowError]):
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors[:50])
        more = f"\n  ... and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{len(errors)} invalid decision row(s), nothing applied:\n{lines}{more}")


@dataclass
class Context:
    """What validation needs to know per sample: original and suggested label, latest verdict."""

    label_original: dict[str, str | None] = field(default_factory=dict)
    verdict: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_context(store: Store, sample_ids: list[str], con: Any = None) -> Context:
    """For `sample_ids`: the known ones (in `samples`, or with a verdict), their original labels
    and latest verdicts. Unknown ids are simply absent. `con`: an open catalog connection to use
    (else the catalog is refreshed and opened, and closed after)."""
    own = con is None
    con = connect(store) if own else con
    ids = sorted(set(sample_ids))
    try:
        ctx = Context()
        for sid, lo in con.execute(
            "SELECT sample_id, label_original FROM samples WHERE sample_id IN (SELECT unnest(?))", [ids]
        ).fetchall():
            ctx.label_original[sid] = lo
        cur = con.execute("SELECT * FROM latest_verdicts WHERE sample_id IN (SELECT unnest(?))", [ids])
        names = [d[0] for d in cur.description]
        for row in cur.fetchall():
            d = dict(zip(names, row, strict=True))
            ctx.verdict[d["sample_id"]] = d
            ctx.label_original.setdefault(d["sample_id"], d["label_original"])
    finally:
        if own:
            con.close()
    return ctx


def _norm(label: str) -> str | None:
    try:
        return normalize_label(label)
    except ValueError:
        return None


def validate_decisions(rows: list[dict[str, str]], ctx: Context) -> tuple[list[Decision], list[RowError], int]:
    """Check decision rows (dicts from csv.DictReader; data lines start at 2).

    Returns (decisions, errors, n_undecided). Identical repeated decisions collapse to one;
    differing ones for the same sample are all reported as conflicts.
    """
    errors: list[RowError] = []
    by_sample: dict[str, list[Decision]] = {}
    undecided = 0
    for i, row in enumerate(rows, start=2):
        sid = (row.get("sample_id") or "").strip()
        action = (row.get("decision") or "").strip().lower()
        raw_label = (row.get("decision_label") or "").strip()
        comment = (row.get("comment") or "").strip() or None
        if not action and not raw_label:
            undecided += 1
            continue
        if not sid:
            errors.append(RowError(i, sid, "empty sample_id"))
            continue
        if sid not in ctx.label_original:
            errors.append(RowError(i, sid, "unknown sample_id (not in samples or relabels)"))
            continue
        if action not in DECISIONS:
            errors.append(RowError(i, sid, f"bad decision {action!r}; use one of {', '.join(DECISIONS)}"))
            continue
        label = None
        if raw_label:
            label = _norm(raw_label)
            if label is None:
                errors.append(RowError(i, sid, f"unknown label {raw_label!r}"))
                continue
        original = ctx.label_original[sid]
        if action == "keep":
            if original is None:
                errors.append(RowError(i, sid, "keep needs an original label; this sample has none (use relabel)"))
                continue
            if label is not None and label != original:
                errors.append(RowError(i, sid, f"keep with decision_label {label!r} != original {original!r} (use relabel)"))
                continue
            final = original
        elif action == "drop":
            if label is not None:
                errors.append(RowError(i, sid, "drop takes no decision_label"))
                continue
            final = None
        else:
            v = ctx.verdict.get(sid) or {}
            final = label or v.get("model_label_suggested") or v.get("label_suggested")  # the model's latest
            if final is None:
                errors.append(RowError(i, sid, "relabel needs a decision_label (no model suggestion to accept)"))
                continue
            if final == original:
                action = "keep"  # relabelling to the same label is a keep
        audit = AUDIT_REASON in (row.get("reasons") or "").split(";")
        by_sample.setdefault(sid, []).append(Decision(i, sid, action, final, comment, audit))
    decisions = []
    for sid, ds in by_sample.items():
        if len({(d.action, d.label_final) for d in ds}) > 1:
            where = ", ".join(f"line {d.line}: {d.action} {d.label_final or ''}".rstrip() for d in ds)
            errors.extend(RowError(d.line, sid, f"conflicting decisions for one sample ({where})") for d in ds)
            continue
        comments = [d.comment for d in ds if d.comment]
        decisions.append(Decision(ds[0].line, sid, ds[0].action, ds[0].label_final, comments[0] if comments else None,
                                  any(d.audit for d in ds)))
    errors.sort(key=lambda e: e.line)
    return decisions, errors, undecided


def read_decisions_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a decisions CSV; raises DecisionError when the header lacks sample_id/decision."""
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in ("sample_id", "decision") if c not in header]
        if missing:
            raise DecisionError([RowError(1, "", f"header lacks column(s) {missing}")])
        return list(reader)


def decision_rows(decisions: list[Decision], ctx: Context, run_id: str, reviewer: str, now: datetime) -> pa.Table:
    """relabels rows (source = human) for validated decisions; model context copied for reference."""
    out = []
    for d in decisions:
        v = ctx.verdict.get(d.sample_id) or {}
        out.append({
            "run_id": run_id, "sample_id": d.sample_id, "label_original": ctx.label_original[d.sample_id],
            "label_suggested": v.get("label_suggested"), "label_final": d.label_final, "action": d.action,
            "alpha": v.get("alpha"), "p_original": v.get("p_original"), "p_suggested": v.get("p_suggested"),
            "margin": v.get("margin"), "sem_dist_original": v.get("sem_dist_original"),
            "sem_dist_suggested": v.get("sem_dist_suggested"), "priority": None, "method": "human",
            "reasons": ["human_review"] + ([AUDIT_REASON] if d.audit else []) + list(d.extra_reasons),
            "source": "human",
            "reviewer": reviewer, "decided_at": now,
            "comment": d.comment,
        })
    schema = pa.schema([
        ("run_id", pa.string()), ("sample_id", pa.string()), ("label_original", pa.string()),
        ("label_suggested", pa.string()), ("label_final", pa.string()), ("action", pa.string()),
        ("alpha", pa.float32()), ("p_original", pa.float32()), ("p_suggested", pa.float32()),
        ("margin", pa.float32()), ("sem_dist_original", pa.float32()), ("sem_dist_suggested", pa.float32()),
        ("priority", pa.float32()), ("method", pa.string()), ("reasons", pa.list_(pa.string())),
        ("source", pa.string()), ("reviewer", pa.string()), ("decided_at", pa.timestamp("us", tz="UTC")),
        ("comment", pa.string()),
    ])
    return pa.Table.from_pylist(out, schema=schema)


def import_decisions(store: Store, csv_path: str | Path, reviewer: str) -> dict[str, Any]:
    """Validate and apply a decisions CSV (see module docstring); all rows or none.

    Returns {"run_id", "applied", "by_action": {...}, "undecided"}; raises DecisionError (after
    recording a failed review-import run with one reject per bad row) when any row is invalid.
    """
    reviewer = reviewer.strip()
    if not reviewer:
        raise ValueError("a reviewer name is required")
    rows = read_decisions_csv(csv_path)
    ctx = load_context(store, [(r.get("sample_id") or "").strip() for r in rows])
    decisions, errors, undecided = validate_decisions(rows, ctx)
    config = {"csv": str(Path(csv_path).resolve()), "reviewer": reviewer}
    if errors:
        with open_run(store, "review-import", config) as run:
            for e in errors:
                run.reject(f"{Path(csv_path).name}:line {e.line}", "review", "invalid_decision",
                           f"{e.sample_id}: {e.problem}")
            raise DecisionError(errors)
    with open_run(store, "review-import", config) as run:
        table = decision_rows(decisions, ctx, run.run_id, reviewer, datetime.now(UTC))
        store.append("relabels", table, run.run_id)
        by_action: dict[str, int] = {}
        for d in decisions:
            by_action[d.action] = by_action.get(d.action, 0) + 1
        run.counts["relabels"] = len(decisions)
        run.counts.update({f"decisions.{k}": v for k, v in by_action.items()})
        run.counts["undecided"] = undecided
    return {"run_id": run.run_id, "applied": len(decisions), "by_action": by_action, "undecided": undecided}


# -- one decision at a time (the review app) -----------------------------------------------------
APP_RUN_KIND = "review-app"
UNDO_REASON = "undo"


def write_human_rows(store: Store, decisions: list[Decision], ctx: Context, reviewer: str, config: dict[str, Any]) -> str:
    """Append `decisions` as human relabels rows under a new run of kind review-app, plus its
    `runs` row; returns the run id. One small contract-validated, atomic part per call, and no
    catalog refresh (the views glob the parts), so a decision costs milliseconds and a killed
    process loses at most the call in flight."""
    from ferclean.runs import Run, new_run_id

    run = Run(store=store, run_id=new_run_id(), kind=APP_RUN_KIND, config=config)
    table = decision_rows(decisions, ctx, run.run_id, reviewer, datetime.now(UTC))
    store.append("relabels", table, run.run_id)
    run.counts["relabels"] = table.num_rows
    run.counts.update({f"decisions.{d.action}": 1 for d in decisions})
    run.write_row("completed")
    return run.run_id


def decide_one(store: Store, con: Any, sample_id: str, decision: str, label: str | None, comment: str | None,
               reviewer: str, audit: bool = False) -> dict[str, Any]:
    """Validate one decision exactly as `review import` validates a CSV row, then append it.

    Raises DecisionError (nothing written) when invalid. Returns the row written."""
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise DecisionError([RowError(0, sample_id, "a reviewer name is required")])
    row = {"sample_id": sample_id, "decision": decision or "", "decision_label": label or "",
           "comment": comment or "", "reasons": AUDIT_REASON if audit else ""}
    if not (decision or "").strip():
        raise DecisionError([RowError(0, sample_id, "empty decision; use one of " + ", ".join(DECISIONS))])
    ctx = load_context(store, [sample_id], con)
    decisions, errors, _ = validate_decisions([row], ctx)
    if errors:
        raise DecisionError(errors)
    d = decisions[0]
    run_id = write_human_rows(store, [d], ctx, reviewer, {"reviewer": reviewer, "sample_id": sample_id})
    return {"run_id": run_id, "sample_id": sample_id, "action": d.action, "label_final": d.label_final,
            "reviewer": reviewer, "audit": d.audit}


def human_history(con: Any, sample_id: str) -> list[dict[str, Any]]:
    """Every human relabels row of a sample, oldest first."""
    cur = con.execute("SELECT * FROM relabels WHERE sample_id = ? AND source = 'human' ORDER BY decided_at, run_id",
                      [sample_id])  # `*`: the comment column exists only once some decision had one
    names = [d[0] for d in cur.description]
    keep = ("run_id", "action", "label_final", "reviewer", "decided_at", "reasons", "comment")
    return [{k: d.get(k) for k in keep} for d in (dict(zip(names, r, strict=True)) for r in cur.fetchall())]


def effective_stack(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replay a sample's human rows: a decision pushes, an undo row pops (the undo row itself
    restates the decision that is then on top, or retracts when none is left)."""
    stack: list[dict[str, Any]] = []
    for h in history:
        if UNDO_REASON in list(h.get("reasons") or []):
            if stack:
                stack.pop()
        else:
            stack.append(h)
    return stack


def undo_one(store: Store, con: Any, sample_id: str, reviewer: str) -> dict[str, Any]:
    """Undo the sample's latest effective human decision (history is kept: a new human row).

    The new row restates the decision before it (reasons + 'undo'), or, when there was none,
    retracts (action review, no final label, reasons + 'undo', 'retracted'): latest_verdicts then
    shows the model's verdict again. Raises DecisionError when there is nothing to undo."""
    from ferclean.views import RETRACTED_REASON

    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise DecisionError([RowError(0, sample_id, "a reviewer name is required")])
    ctx = load_context(store, [sample_id], con)
    if sample_id not in ctx.label_original:
        raise DecisionError([RowError(0, sample_id, "unknown sample_id (not in samples or relabels)")])
    stack = effective_stack(human_history(con, sample_id))
    if not stack:
        raise DecisionError([RowError(0, sample_id, "no human decision to undo")])
    undone = stack.pop()
    audit = AUDIT_REASON in list(undone.get("reasons") or [])
    if stack:
        prev = stack[-1]
        d = Decision(0, sample_id, prev["action"], prev["label_final"],
                     f"undo: restores the decision of {prev['reviewer']} ({prev['run_id']})",
                     audit=audit, extra_reasons=[UNDO_REASON])
    else:
        d = Decision(0, sample_id, "review", None, f"undo: withdraws {undone['reviewer']}'s decision",
                     audit=audit, extra_reasons=[UNDO_REASON, RETRACTED_REASON])
    run_id = write_human_rows(store, [d], ctx, reviewer, {"reviewer": reviewer, "sample_id": sample_id, "undo": True})
    return {"run_id": run_id, "sample_id": sample_id, "undone": {k: undone[k] for k in ("run_id", "action", "label_final", "reviewer")},
            "restored": None if d.action == "review" else {"action": d.action, "label_final": d.label_final}}
