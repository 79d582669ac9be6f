"""Time the analyst views on a synthetic ~1 M-row relabels table.

    python benchmarks/bench_views.py [--samples 250000] [--runs 4] [--repeat 5] [--out DIR]

Builds a store with `samples * runs` model verdicts plus 2 % human decisions (ferclean.report.
synthetic.synthetic_relabels), written through Store.append (contract-validated), refreshes the
catalog, then for each view runs `SELECT * FROM <view>` fully materialised into Arrow and
`SELECT count(*) FROM <view>`, `--repeat` times after one warm-up, on a read-only connection
(the way `ferclean query`, the duckdb CLI and pandas use the catalog). Writes
benchmarks/results/views.json and views.md with per-view median/min milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.compute as pc

from ferclean.catalog import EXTRA_VIEWS, refresh_catalog
from ferclean.report.synthetic import synthetic_relabels
from ferclean.store import Store

VIEWS = ("latest_verdicts", "review_queue", "noise_by_class", "label_confusion", "run_history", "quality_issues")
TARGET_MS = 200.0
#: Alternative formulations timed for comparison (not views).
COMPARE = {
    "(row_number window variant of latest_verdicts)": """
        SELECT * FROM relabels QUALIFY row_number() OVER (
            PARTITION BY sample_id ORDER BY decided_at DESC, (source = 'human') DESC, run_id DESC) = 1""",
}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process (DuckDB's too)
    return r.ru_utime + r.ru_stime


def time_sql(con: duckdb.DuckDBPyConnection, sql: str, repeat: int) -> tuple[list[float], list[float], int]:
    """Run `sql` once to warm up, then `repeat` times, fetching into Arrow.

    Returns (wall ms per run, process CPU ms per run, result rows). CPU time does not grow when
    other processes compete for the cores, so it is the stable number on a shared machine.
    """
    n = con.sql(sql).to_arrow_table().num_rows
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), _cpu_s()
        con.sql(sql).to_arrow_table()
        wall.append(1000 * (time.perf_counter() - t))
        cpu.append(1000 * (_cpu_s() - c))
    return wall, cpu, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=250_000)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="store folder (default: a temporary one)")
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_views_")
        args.out = Path(tmp.name)
    store = Store(args.out)
    t0 = time.perf_counter()
    table = synthetic_relabels(args.samples, n_runs=args.runs)
    for run_id in sorted(set(table.column("run_id").to_pylist())):
        part = table.filter(pc.equal(table.column("run_id"), run_id))
        store.append("relabels", part, run_id)
    refresh_catalog(store)
    build_s = time.perf_counter() - t0

    con = duckdb.connect(str(store.root / "catalog.duckdb"), read_only=True)
    results = []
    try:
        threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
        jobs = {v: f'SELECT * FROM "{v}"' for v in VIEWS if v in EXTRA_VIEWS} | COMPARE
        for view, sql in jobs.items():
            full, full_cpu, n = time_sql(con, sql, args.repeat)
            cnt, _cnt_cpu, _ = time_sql(con, f"SELECT count(*) FROM ({sql})", args.repeat)
            results.append({
                "view": view, "rows": n,
                "full_median_ms": round(statistics.median(full), 1), "full_min_ms": round(min(full), 1),
                "full_cpu_median_ms": round(statistics.median(full_cpu), 1),
                "count_median_ms": round(statistics.median(cnt), 1),
                "under_target_wall": statistics.median(full) < TARGET_MS,
            })
            print(f"{view:18s} rows={n:>8d}  SELECT * wall median {results[-1]['full_median_ms']:8.1f} ms"
                  f" (min {results[-1]['full_min_ms']:.1f}), CPU {results[-1]['full_cpu_median_ms']:8.1f} ms;"
                  f"  count(*) wall {results[-1]['count_median_ms']:8.1f} ms")
    finally:
        con.close()
    meta = {
        "relabels_rows": table.num_rows, "samples": args.samples, "model_runs": args.runs,
        "parts": len(store.part_files("relabels")), "repeat": args.repeat, "duckdb_threads": threads,
        "duckdb": duckdb.__version__, "cpu_count": os.cpu_count(), "machine": platform.platform(),
        "build_seconds": round(build_s, 1), "target_ms": TARGET_MS,
        "load_average_1m_after": round(os.getloadavg()[0], 2),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "views.json").write_text(json.dumps({"meta": meta, "views": results}, indent=1) + "\n")
    lines = [
        "# Analyst view latency", "",
        f"relabels: {table.num_rows:,} rows ({args.samples:,} samples x {args.runs} model runs + 2 % human), "
        f"{meta['parts']} Parquet parts; DuckDB {duckdb.__version__}, {threads} threads, {os.cpu_count()} CPUs "
        f"(shared machine); {args.repeat} timed runs after 1 warm-up; read-only catalog connection.", "",
        f"1-minute load average after the run: {meta['load_average_1m_after']} (other engineers' jobs share the "
        "cores, so wall times are inflated; process CPU time counts the work DuckDB's threads did).", "",
        "| view | result rows | SELECT * -> Arrow wall median ms | wall min ms | CPU median ms | count(*) wall median ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['view']} | {r['rows']:,} | {r['full_median_ms']} | {r['full_min_ms']} | {r['full_cpu_median_ms']} | "
              f"{r['count_median_ms']} |" for r in results]
    (args.results / "views.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.results / 'views.json'} and views.md")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
