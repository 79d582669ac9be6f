"""Self-contained HTML report of a run folder (`ferclean report OUT`).

:func:`build_report` reads the catalog views (latest_verdicts, label_confusion, noise_by_class,
au_graph, au_prevalence_by_label), training-curve JSON files under `OUT/runs/`, and the aligned
crops of the top flagged faces, draws the plots with matplotlib (Agg) and writes one HTML file
with every image inlined as a base64 PNG, so it opens offline and can be mailed around.
A section whose inputs do not exist yet says "Not available" instead of failing.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from ferclean.catalog import connect
from ferclean.report import data, plots
from ferclean.store import Store

__all__ = ["build_report", "render_report"]


def _template() -> jinja2.Template:
    text = resources.files("ferclean.report").joinpath("template.html").read_text(encoding="utf-8")
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(text)


def render_report(store: Store, top_n: int = 24) -> str:
    """Build the report's HTML text for `store` (see module docstring)."""
    con = connect(store)
    try:
        views = data._views(con)
        verdicts = data.verdict_counts(con)
        n_human, n_disagree = data.human_decisions(con)
        conf = data.confusion(con)
        rates = data.flag_rates(con)
        cooc = data.au_cooccurrence(con)
        prev = data.au_prevalence(con, "original")
        prev_final = data.au_prevalence(con, "final")
        flagged = data.top_flagged(con, top_n)
        n_samples = con.execute("SELECT count(*) FROM samples").fetchone()[0]
        n_verdicts = con.execute("SELECT count(*) FROM latest_verdicts").fetchone()[0]
        n_runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    finally:
        con.close()
    curves = data.training_curves(store)

    p: dict[str, Any] = {}
    if verdicts:
        by_action: dict[str, int] = {}
        for a, _s, n in verdicts:
            by_action[a] = by_action.get(a, 0) + n
        p["verdicts"] = plots.data_uri(plots.bars(by_action, "Latest verdict per sample", "samples"))
    if conf is not None:
        p["confusion"] = plots.data_uri(
            plots.heatmap(conf.values, conf.rows, conf.cols, "Original → final label (samples)",
                          xlabel="final", ylabel="original", cmap="Blues"))
    if rates:
        p["flag_rates"] = plots.data_uri(plots.bars(
            {str(r["label_original"]): 100 * float(r["flag_rate"]) for r in rates},
            "Flagged share per original class", "% flagged", fmt="{:.1f}"))
    if cooc is not None:
        p["au_cooc"] = plots.data_uri(plots.heatmap(cooc.values, cooc.rows, cooc.cols,
                                                    "P(AU row | AU column)", fmt="{:.2f}", vmax=1.0))
    if prev is not None:
        p["au_prev"] = plots.data_uri(plots.heatmap(prev.values, prev.rows, prev.cols,
                                                    "AU prevalence by original class", fmt="{:.2f}", vmax=1.0))
    if prev_final is not None:
        p["au_prev_final"] = plots.data_uri(plots.heatmap(
            prev_final.values, prev_final.rows, prev_final.cols, "AU prevalence by final class",
            fmt="{:.2f}", vmax=1.0))
    p["curves"] = [{"title": c.title, "uri": plots.data_uri(plots.curves(c.x, c.series, c.title))} for c in curves]
    for key in ("verdicts", "confusion", "flag_rates", "au_cooc", "au_prev", "au_prev_final"):
        p.setdefault(key, None)

    reasons = {
        "au_cooc": "the au_graph table is empty or has no contract yet" if "au_graph" in views
        else "no au_graph table in this catalog",
        "au_prev": "no primary faces with AUs yet" if "au_prevalence_by_label" in views
        else "the faces/aus tables are not in this catalog",
    }
    cards = []
    for f in flagged:
        d = asdict(f)
        png = d.pop("png")
        d["uri"] = plots.data_uri(png) if png else None
        cards.append(d)
    return _template().render(
        out_name=store.root.name, out_path=str(store.root),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        n_samples=n_samples, n_verdicts=n_verdicts, n_runs=n_runs,
        verdicts=verdicts, n_human=n_human, n_disagree=n_disagree, flag_rates=rates, plots=p, reasons=reasons, flagged=cards,
    )


def build_report(store: Store, path: str | Path | None = None, top_n: int = 24) -> Path:
    """Write the HTML report to `path` (default `OUT/report.html`) and return the path."""
    dest = Path(path) if path else store.root / "report.html"
    dest.parent.mkdir(parents=True, exist_ok=True)
    html = render_report(store, top_n=top_n)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(dest)
    return dest
