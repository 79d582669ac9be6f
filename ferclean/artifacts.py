"""Per-stage run reports as Markdown, published as Prefect artifacts by the flows.

Rendering is pure (dicts and small tables in, Markdown text out); :func:`stage_report` reads the
few extra numbers a stage's reader wants from the store (detector fallback share, AU prevalence,
verdict counts) with column-pruned reads; :func:`publish` hands the text to Prefect when a flow or
task run is active and is a no-op otherwise (plain library/CLI use).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ferclean.store import Store

# -- pure rendering ----------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if isinstance(v, float):
        text = f"{v:.4g}"
    elif isinstance(v, dict | list | tuple):
        text = json.dumps(v, default=str)
        if len(text) > 120:
            text = text[:117] + "..."
    else:
        text = str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-style Markdown table of `rows` (dicts); empty string for no rows."""
    if not rows:
        return ""
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def rejects_by_reason(counts: Mapping[str, int], stage: str) -> dict[str, int]:
    """Pick `rejects.<stage>.<reason>` counters out of a run's counts -> {reason: n}."""
    prefix = f"rejects.{stage}."
    return {k[len(prefix):]: int(v) for k, v in sorted(counts.items()) if k.startswith(prefix)}


def scalar_items(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Summary entries that fit in a cell (numbers, strings, short lists), as key/value rows."""
    rows = []
    for k, v in summary.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            continue  # rendered as its own table
        if isinstance(v, dict) and len(v) > 12:
            continue
        rows.append({"key": k, "value": v})
    return rows


def render_report(
    stage: str,
    summary: Mapping[str, Any],
    *,
    cached: bool = False,
    rejects: Mapping[str, int] | None = None,
    sections: Mapping[str, str | Sequence[Mapping[str, Any]]] | None = None,
) -> str:
    """Markdown for one stage: a status line, the summary, rejects by reason, extra sections.

    `sections` maps a title to Markdown text or to rows for :func:`md_table`. Lists of dicts in
    the summary (e.g. a training curve, one row per epoch) become tables of their own.
    """
    out = [f"# ferclean stage `{stage}`", ""]
    out.append("Cached: inputs, config and code unchanged, nothing recomputed." if cached else "Computed in this run.")
    out += ["", "## Summary", "", md_table(scalar_items(summary), ["key", "value"]) or "(empty)"]
    for k, v in summary.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            out += ["", f"## {k}", "", md_table(v)]
    if rejects:
        total = sum(rejects.values())
        rows = [{"reason": r, "n": n, "share": n / total} for r, n in sorted(rejects.items(), key=lambda x: -x[1])]
        out += ["", "## Rejects by reason", "", md_table(rows, ["reason", "n", "share"])]
    for title, body in (sections or {}).items():
        text = body if isinstance(body, str) else md_table(body)
        if text:
            out += ["", f"## {title}", "", text]
    return "\n".join(out) + "\n"


# -- numbers read from the store ---------------------------------------------------------------


def value_shares(values: pa.Array | pa.ChunkedArray) -> list[dict[str, Any]]:
    """[{value, n, share}] for each distinct value, most frequent first."""
    n = len(values)
    if n == 0:
        return []
    vc = pc.value_counts(values).to_pylist()
    rows = [{"value": d["values"], "n": d["counts"], "share": d["counts"] / n} for d in vc]
    return sorted(rows, key=lambda r: (-r["n"], str(r["value"])))


def detector_shares(store: Store) -> list[dict[str, Any]]:
    """Share of primary faces per detector (`full_frame` is the no-detection fallback)."""
    if not store.count("faces"):
        return []
    t = store.read("faces", columns=["detector", "is_primary"])
    t = t.filter(pc.field("is_primary"))
    return [{"detector": r["value"], "n": r["n"], "share": r["share"]} for r in value_shares(t.column("detector"))]


def au_prevalence(store: Store) -> list[dict[str, Any]]:
    """Per AU: share of rows of `aus` with the AU present (AUxx_c >= 0.5) and mean intensity."""
    if not store.count("aus"):
        return []
    dset = store.dataset("aus")
    names = dset.schema.names if dset is not None else []
    occ = sorted(c for c in names if re.fullmatch(r"AU\d+_c", c))
    t = store.read("aus", columns=occ + [c[:-2] + "_r" for c in occ if c[:-2] + "_r" in names])
    rows = []
    for c in occ:
        col = pc.cast(t.column(c), pa.float64())
        present = pc.mean(pc.cast(pc.greater_equal(col, 0.5), pa.float64())).as_py()
        r = c[:-2] + "_r"
        mean_r = pc.mean(pc.cast(t.column(r), pa.float64())).as_py() if r in t.column_names else None
        rows.append({"au": c[:-2], "prevalence": present, "mean_intensity": mean_r})
    return rows


def verdict_counts(store: Store, run_id: str | None) -> list[dict[str, Any]]:
    """Counts of `relabels.action` for the rows written by `run_id` (all rows when None)."""
    if not store.count("relabels"):
        return []
    t = store.read("relabels", columns=["run_id", "action"])
    if run_id is not None:
        t = t.filter(pc.equal(t.column("run_id"), run_id))
    return [{"action": r["value"], "n": r["n"], "share": r["share"]} for r in value_shares(t.column("action"))]


def curve_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, fold) of per-epoch training log rows: epochs, first/last loss, last
    accuracy, seconds. Rows need `epoch`; `method`, `fold`, `loss`, `acc`, `seconds` are optional."""
    groups: dict[tuple[Any, Any], list[Mapping[str, Any]]] = {}
    for r in rows:
        if "epoch" in r:
            groups.setdefault((r.get("method"), r.get("fold")), []).append(r)
    out = []
    for (method, fold), g in groups.items():
        g = sorted(g, key=lambda r: r["epoch"])
        out.append({
            "method": method, "fold": fold, "epochs": len(g),
            "first_loss": g[0].get("loss"), "last_loss": g[-1].get("loss"), "last_acc": g[-1].get("acc"),
            "seconds": sum(float(r.get("seconds") or 0) for r in g),
        })
    return out


def _train_curves(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    path = summary.get("curves")
    if not isinstance(path, str):
        return []
    try:
        return curve_summary(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError):
        return []


def stage_sections(
    store: Store, stage: str, run_id: str | None, summary: Mapping[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """The stage-specific tables of a report (read from the stage's output table)."""
    if stage == "faces":
        return {"Detector (primary faces; full_frame = fallback)": detector_shares(store)}
    if stage == "aus":
        return {"AU prevalence": au_prevalence(store)}
    if stage in ("relabel", "score"):
        return {"Verdicts": verdict_counts(store, run_id)}
    if stage == "train":
        return {"Training curves (per method and fold)": _train_curves(summary or {})}
    return {}


def stage_report(
    store: Store, stage: str, summary: Mapping[str, Any], counts: Mapping[str, int],
    cached: bool = False, run_id: str | None = None,
) -> str:
    """The Markdown report of one finished stage (see :func:`render_report`)."""
    rejects = dict(summary.get("rejects_by_reason") or {}) or rejects_by_reason(counts, stage)
    try:
        sections = stage_sections(store, stage, run_id, summary)
    except (pa.ArrowInvalid, KeyError) as exc:  # an output without the columns a section reads
        sections = {"Note": f"extra tables unavailable: {exc}"}
    return render_report(stage, summary, cached=cached, rejects=rejects, sections=sections)


# -- Prefect -----------------------------------------------------------------------------------


def artifact_key(stage: str, prefix: str = "ferclean") -> str:
    """A valid Prefect artifact key (lower-case letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{prefix}-{stage}".lower()).strip("-")


def publish(stage: str, markdown: str, description: str | None = None, prefix: str = "ferclean") -> bool:
    """Create a Prefect Markdown artifact when inside a flow/task run; return whether it did."""
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return False
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(
        markdown=markdown, key=artifact_key(stage, prefix), description=description or f"ferclean {stage} stage"
    )
    return True
