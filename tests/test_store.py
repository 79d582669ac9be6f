"""Contracts, atomic Parquet writes, runs rows and the DuckDB catalog."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ferclean.catalog import query, refresh_catalog
from ferclean.contracts import ContractViolation, contract_tables, load_contract, parse_contract, validate
from ferclean.runs import open_run
from ferclean.store import Store

TOY = parse_contract({
    "table": "toy",
    "primary_key": ["id"],
    "columns": [
        {"name": "id", "type": "string", "nullable": False},
        {"name": "label", "type": "string", "allowed": ["a", "b"]},
        {"name": "score", "type": "float32", "min": 0, "max": 1},
        {"name": "vec", "type": "list<float32>[2]"},
        {"name": "meta", "type": "json"},
    ],
})


def toy(**over):
    base = {"id": ["x", "y"], "label": ["a", None], "score": [0.5, 1.0], "vec": [[0, 1], [2, 3]],
            "meta": ['{"k": 1}', None]}
    base.update(over)
    return pa.table(base)


def test_validate_casts_and_orders():
    out = validate(toy().select(["meta", "vec", "score", "label", "id"]), TOY)
    assert out.column_names == ["id", "label", "score", "vec", "meta"]
    assert out.schema.field("score").type == pa.float32()
    assert pa.types.is_fixed_size_list(out.schema.field("vec").type)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"id": ["x", None]}, "not nullable"),
        ({"id": ["x", "x"]}, "not unique"),
        ({"label": ["a", "c"]}, "outside"),
        ({"score": [0.5, 1.5]}, "above its maximum"),
        ({"score": [-0.1, 0.5]}, "below its minimum"),
        ({"meta": ["{", None]}, "invalid JSON"),
        ({"score": ["high", "low"]}, "cannot be read"),
    ],
)
def test_validate_rejects_bad_tables(over, match):
    with pytest.raises(ContractViolation, match=match):
        validate(toy(**over), TOY)


def test_missing_and_undeclared_columns():
    with pytest.raises(ContractViolation, match="missing columns"):
        validate(toy().drop_columns(["score"]), TOY)
    with pytest.raises(ContractViolation, match="undeclared"):
        validate(toy().append_column("zzz", pa.array([1, 2])), TOY)


def test_all_contracts_parse_and_have_run_id():
    tables = contract_tables()
    assert {"samples", "rejects", "runs", "predictions", "relabels"} <= set(tables)
    for t in tables:
        c = load_contract(t)
        assert c.table == t
        assert "run_id" in c.names, f"{t} rows must carry run_id"


def test_write_part_is_atomic(tmp_path, monkeypatch):
    store = Store(tmp_path)
    rows = pa.table({"run_id": ["r"], "source_ref": ["a"], "stage": ["ingest"], "reason_code": ["empty_file"],
                     "message": ["m"], "created_at": pa.array([0], pa.timestamp("us", tz="UTC"))})
    real = pq.write_table

    def crash(table, where, **kw):
        real(table.slice(0, 0), where, **kw)  # something lands on disk, then the writer dies
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError):
        store.write_part("rejects", "k1", rows)
    assert store.part_files("rejects") == []
    assert list(store.table_dir("rejects").iterdir()) == []  # no temp file left behind either
    monkeypatch.setattr(pq, "write_table", real)
    store.write_part("rejects", "k1", rows)
    assert store.count("rejects") == 1


def test_invalid_rows_never_reach_disk(tmp_path):
    store = Store(tmp_path)
    bad = pa.table({"run_id": ["r"], "source_ref": ["a"], "stage": ["nowhere"], "reason_code": ["empty_file"],
                    "message": ["m"], "created_at": pa.array([0], pa.timestamp("us", tz="UTC"))})
    with pytest.raises(ContractViolation):
        store.write_part("rejects", "k", bad)
    assert store.part_files("rejects") == []


def test_keep_only_and_read_empty(tmp_path):
    store = Store(tmp_path)
    assert store.read("samples").num_rows == 0
    assert "sample_id" in store.read("samples").column_names
    for k in ("a", "b"):
        store.write_part("runs", k, pa.table({
            "run_id": [k], "kind": ["x"], "started_at": pa.array([0], pa.timestamp("us", tz="UTC")),
            "finished_at": pa.array([0], pa.timestamp("us", tz="UTC")), "status": ["completed"],
            "config": ["{}"], "versions": ["{}"], "counts": ["{}"], "error": [None]}))
    assert store.keep_only("runs", ["b"]) == 1
    assert store.read("runs").column("run_id").to_pylist() == ["b"]
    with pytest.raises(ValueError):
        store.part_path("runs", "../evil")


def test_run_rows_and_catalog(tmp_path):
    store = Store(tmp_path)
    with open_run(store, "test", {"x": 1}) as run:
        run.counts["things"] += 3
        run.reject("f.png", "ingest", "empty_file", "0 bytes")
    with pytest.raises(RuntimeError), open_run(store, "test", {}):
        raise RuntimeError("boom")
    runs = sorted(store.read("runs").to_pylist(), key=lambda r: r["started_at"])
    assert [r["status"] for r in runs] == ["completed", "failed"]
    assert json.loads(runs[0]["counts"])["things"] == 3
    assert json.loads(runs[0]["versions"])["pyarrow"]
    assert "boom" in runs[1]["error"]
    # Every contract table has a view, even when it has no rows yet, and it opens from duckdb directly.
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True)
    assert con.execute("select count(*) from rejects").fetchone() == (1,)
    assert con.execute("select count(*) from relabels").fetchone() == (0,)
    con.close()
    cols, rows = query(store, "select status, count(*) from run_history group by 1 order by 1")
    assert rows == [("completed", 1), ("failed", 1)]


def test_catalog_is_refreshable_after_move(tmp_path):
    store = Store(tmp_path / "a")
    with open_run(store, "test", {}):
        pass
    (tmp_path / "a").rename(tmp_path / "b")
    moved = Store(tmp_path / "b")
    refresh_catalog(moved)
    assert query(moved, "select count(*) from runs")[1] == [(1,)]
