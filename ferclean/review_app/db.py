"""An in-memory DuckDB catalog over a run folder, for a long-lived process.

The same views as `OUT/catalog.duckdb` (table views over the Parquet parts + the analyst views),
but in memory: the app never holds a lock on the catalog file that `curate` rewrites. The table
views glob the parts at query time, so new rows are seen at once; :meth:`MemoryCatalog.refresh`
re-creates the views (needed only when a table gets its first part, e.g. a first verdict run).

`relabels` is the exception: every decision adds a small part, and latest_verdicts reads the
table several times, so reading hundreds of tiny files per query would cost ~0.5 s. Its rows are
mirrored in an in-memory table instead, synced before every request from the part files (new
parts are appended; a vanished part or a new column reloads the whole table).
"""

from __future__ import annotations

import threading

import duckdb

from ferclean.catalog import EXTRA_VIEWS, _quote, table_view_sql
from ferclean.contracts import contract_tables
from ferclean.store import Store


MIRRORED = "relabels"
MIRROR_TABLE = "_relabels_mirror"


class MemoryCatalog:
    """Views over `store`'s tables in a private in-memory database; :meth:`cursor` per thread."""

    def __init__(self, store: Store):
        import ferclean.views  # noqa: F401  (registers the analyst views)

        self.store = store
        self._con = duckdb.connect(":memory:")
        self._lock = threading.Lock()
        self._has_parts: tuple[bool, ...] = ()
        self._relabel_files: set[str] = set()
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Re-create the views when a table gained (or lost) its parts since the last refresh."""
        tables = contract_tables()
        has = tuple(bool(self.store.part_files(t)) for t in tables)
        with self._lock:
            if not force and has == self._has_parts:
                return
            for table in tables:
                if table == MIRRORED and self._sync_relabels():
                    self._con.execute(f"CREATE OR REPLACE VIEW {_quote(table)} AS SELECT * FROM {MIRROR_TABLE}")
                    continue
                self._con.execute(f"CREATE OR REPLACE VIEW {_quote(table)} AS {table_view_sql(self.store, table)}")
            for name, body in EXTRA_VIEWS.items():
                try:
                    self._con.execute(f"CREATE OR REPLACE VIEW {_quote(name)} AS {body}")
                except duckdb.Error:
                    continue  # a view over a table this run folder lacks columns for: absent
            self._has_parts = has

    def _sync_relabels(self) -> bool:
        """Bring the in-memory mirror of `relabels` up to date; False when the table has no parts."""
        files = {str(f) for f in self.store.part_files(MIRRORED)}
        if not files:
            self._relabel_files = set()
            return False
        new = sorted(files - self._relabel_files)
        if not new and files == self._relabel_files:
            return True

        def read(paths: list[str]) -> str:
            return "SELECT * FROM read_parquet(" + "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + \
                "], union_by_name = true)"

        if self._relabel_files and self._relabel_files <= files:
            try:
                self._con.execute(f"INSERT INTO {MIRROR_TABLE} BY NAME {read(new)}")
                self._relabel_files = files
                return True
            except duckdb.Error:
                pass  # a column the mirror lacks: reload
        self._con.execute(f"CREATE OR REPLACE TABLE {MIRROR_TABLE} AS {read(sorted(files))}")
        self._relabel_files = files
        return True

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection for one request (DuckDB cursors are safe to use from one thread each),
        after syncing the relabels mirror (and the views, when a table gained its first part)."""
        self.refresh()
        with self._lock:
            if self._has_parts and self._relabel_files:
                self._sync_relabels()
        return self._con.cursor()

    def views(self) -> set[str]:
        cur = self.cursor()
        try:
            return {r[0] for r in cur.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        finally:
            cur.close()

    def close(self) -> None:
        self._con.close()
