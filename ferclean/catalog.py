"""DuckDB catalog `OUT/catalog.duckdb`: one view per table over its Parquet parts, plus
the analyst views of :data:`ferclean.views.EXTRA_VIEWS`.

Views use absolute paths, so the catalog works from any working directory, from the `duckdb`
CLI and from pandas/polars; :func:`refresh_catalog` rebuilds them (every run does this, and
`ferclean query` does it first) so a moved run folder is fixed by one refresh.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import duckdb
import pyarrow as pa

from ferclean.contracts import contract_tables, load_contract
from ferclean.store import Store
from ferclean.views import EXTRA_VIEWS  # the analyst views (a plain import: no registration side effects)


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "VARCHAR"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    mapping = {
        pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
        pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.binary(): "BLOB",
    }
    if t in mapping:
        return mapping[t]
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    raise TypeError(f"no DuckDB type for {t}")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_view_sql(store: Store, table: str) -> str:
    """SELECT over the table's parts, or an empty, correctly typed SELECT when it has none."""
    files = store.part_files(table)
    if files:
        glob = str(store.table_dir(table) / "part-*.parquet").replace("'", "''")
        return f"SELECT * FROM read_parquet('{glob}', union_by_name = true)"
    cols = ", ".join(
        f"CAST(NULL AS {_duck_type(c.arrow)}) AS {_quote(c.name)}" for c in load_contract(table).columns
    )
    return f"SELECT {cols} WHERE false"


def refresh_catalog(store: Store, on_error: Callable[[str, Exception], None] | None = None) -> None:
    """(Re)create `OUT/catalog.duckdb` with a view per table and the analyst views."""
    store.root.mkdir(parents=True, exist_ok=True)
    # Written in the v1.0 storage format so older duckdb CLIs (1.x from PyPI) can open it too.
    con = duckdb.connect(str(store.root / "catalog.duckdb"), config={"storage_compatibility_version": "v1.0.0"})
    try:
        for table in contract_tables():
            con.execute(f"CREATE OR REPLACE VIEW {_quote(table)} AS {table_view_sql(store, table)}")
        for name, body in EXTRA_VIEWS.items():
            try:
                con.execute(f"CREATE OR REPLACE VIEW {_quote(name)} AS {body}")
            except duckdb.Error as exc:
                if on_error is None:
                    raise
                on_error(name, exc)
    finally:
        con.close()


_WRITE_RE = re.compile(r"^\s*(insert|update|delete|drop|create|alter|copy|attach|detach|install|load)\b", re.I)


def query(store: Store, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one read-only SQL statement against the catalog; return (column names, rows)."""
    if not (store.root / "catalog.duckdb").exists() and not store.tables_dir.exists():
        raise FileNotFoundError(f"{store.root} is not a ferclean output folder (no tables/)")
    refresh_catalog(store)
    con = duckdb.connect(str(store.root / "catalog.duckdb"), read_only=True)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    finally:
        con.close()


def connect(store: Store, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """An open DuckDB connection to the catalog (refreshed first)."""
    refresh_catalog(store)
    return duckdb.connect(str(store.root / "catalog.duckdb"), read_only=read_only)
