"""Analyst catalog views: empty-store compile, verdict precedence, aggregates, AU and quality views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa
import pytest

import ferclean.views as views
from ferclean.catalog import EXTRA_VIEWS, query, refresh_catalog
from ferclean.contracts import contract_tables
from ferclean.report.synthetic import make_demo_store
from ferclean.store import Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def verdict(run_id: str, sid: str, action: str, orig: str | None, final: str | None, *, source: str = "model",
            when: datetime = T0, priority: float | None = None, sugg: str | None = None, margin: float | None = None) -> dict:
    return {
        "run_id": run_id, "sample_id": sid, "label_original": orig, "label_suggested": sugg or final,
        "label_final": final, "action": action, "alpha": 0.5, "p_original": 0.2, "p_suggested": 0.6,
        "margin": margin, "sem_dist_original": None, "sem_dist_suggested": None, "priority": priority,
        "method": "human" if source == "human" else "ulcag", "reasons": [], "source": source,
        "reviewer": "ann" if source == "human" else None, "decided_at": when,
    }


def rows(store: Store, sql: str) -> list[tuple]:
    return query(store, sql)[1]


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(tmp_path / "out")
    # r1 (day 0): model verdicts for a, b, c, d
    s.append("relabels", pa.Table.from_pylist([
        verdict("r1", "a", "relabel", "sad", "happy", priority=0.1),
        verdict("r1", "b", "review", "sad", "sad", priority=0.9, margin=0.1),
        verdict("r1", "c", "keep", "happy", "happy"),
        verdict("r1", "d", "review", "happy", "happy", priority=0.5, margin=-0.4),
    ]), "r1")
    # human decision (day 1) on b: drop; and on d at the same instant as a model row of r2
    s.append("relabels", pa.Table.from_pylist([
        verdict("h1", "b", "drop", "sad", None, source="human", when=T0 + timedelta(days=1)),
        verdict("h1", "d", "keep", "happy", "happy", source="human", when=T0 + timedelta(days=2)),
    ]), "h1")
    # r2 (day 2): a newer model run re-flags a and d
    s.append("relabels", pa.Table.from_pylist([
        verdict("r2", "a", "review", "sad", "sad", when=T0 + timedelta(days=2), priority=0.7),
        verdict("r2", "d", "relabel", "happy", "angry", when=T0 + timedelta(days=2)),
    ]), "r2")
    refresh_catalog(s)
    return s


def test_every_extra_view_compiles_on_an_empty_store(tmp_path):
    s = Store(tmp_path / "empty")
    s.tables_dir.mkdir(parents=True)
    refresh_catalog(s)
    con = duckdb.connect(str(s.root / "catalog.duckdb"), read_only=True)
    try:
        for name in EXTRA_VIEWS:
            cur = con.execute(f'SELECT * FROM "{name}"')
            assert cur.description and cur.fetchall() == [], name
    finally:
        con.close()
    for name in ("latest_verdicts", "review_queue", "noise_by_class", "label_confusion", "quality_issues"):
        assert name in EXTRA_VIEWS


def test_latest_verdicts_one_row_per_sample_latest_wins_human_beats_older_model(store):
    got = dict((sid, (run, action)) for sid, run, action in
               rows(store, "SELECT sample_id, run_id, action FROM latest_verdicts"))
    assert got == {
        "a": ("r2", "review"),  # newer model run beats older model run
        "b": ("h1", "drop"),  # human decision beats the older model row
        "c": ("r1", "keep"),
        "d": ("h1", "keep"),  # same timestamp as r2's model row: the human row wins the tie
    }


def test_human_decision_is_final_over_newer_model_runs_and_the_model_opinion_stays_visible(store):
    # r4 (day 5): a model run newer than every human decision: re-flags b and d, agrees on nothing
    store.append("relabels", pa.Table.from_pylist([
        verdict("r4", "b", "relabel", "sad", "angry", when=T0 + timedelta(days=5)),
        verdict("r4", "d", "keep", "happy", "happy", when=T0 + timedelta(days=5)),
        verdict("r4", "c", "review", "happy", "happy", sugg="fear", when=T0 + timedelta(days=5)),
    ]), "r4")
    cols = ("run_id, source, action, label_final, model_run_id, model_action, model_label_final, "
            "model_disagrees_with_human")
    got = {r[0]: r[1:] for r in rows(store, f"SELECT sample_id, {cols} FROM latest_verdicts")}
    assert got["b"] == ("h1", "human", "drop", None, "r4", "relabel", "angry", True)  # newer model disagrees
    assert got["d"] == ("h1", "human", "keep", "happy", "r4", "keep", "happy", False)  # newer model agrees
    assert got["c"] == ("r4", "model", "review", "happy", "r4", "review", "happy", False)  # no human: model
    assert rows(store, "SELECT sample_id FROM review_queue ORDER BY 1") == [("a",), ("c",)]
    # a newer human decision replaces the older one; a retraction hands the sample back to the model
    store.append("relabels", pa.Table.from_pylist([
        verdict("h2", "b", "keep", "sad", "sad", source="human", when=T0 + timedelta(days=6)),
        {**verdict("h2", "d", "review", "happy", None, source="human", when=T0 + timedelta(days=6)),
         "reasons": ["human_review", "undo", views.RETRACTED_REASON]},
    ]), "h2")
    got = {r[0]: r[1:] for r in rows(store, f"SELECT sample_id, {cols} FROM latest_verdicts")}
    assert got["b"] == ("h2", "human", "keep", "sad", "r4", "relabel", "angry", False)  # decided after r4
    assert got["d"] == ("r4", "model", "keep", "happy", "r4", "keep", "happy", False)
    assert rows(store, "SELECT count(*), count(DISTINCT sample_id) FROM latest_verdicts") == [(4, 4)]


def test_review_queue_orders_by_priority(store):
    assert rows(store, "SELECT sample_id FROM review_queue") == [("a",)]
    s2 = store
    s2.append("relabels", pa.Table.from_pylist([
        verdict("r3", "x", "review", "sad", "sad", when=T0 + timedelta(days=3), priority=0.2),
        verdict("r3", "y", "review", "sad", "sad", when=T0 + timedelta(days=3), priority=None, margin=0.9),
        verdict("r3", "z", "review", "sad", "sad", when=T0 + timedelta(days=3), priority=0.95),
    ]), "r3")
    assert [r[0] for r in rows(s2, "SELECT sample_id FROM review_queue")] == ["z", "a", "x", "y"]


def test_noise_by_class_and_label_confusion(store):
    noise = {r[0]: r[1:] for r in rows(store, "SELECT * FROM noise_by_class")}
    # sad: a (review), b (drop) -> 2 of 2 flagged; happy: c keep, d keep -> 0 of 2
    assert noise["sad"] == (2, 2, 0, 1, 1, 1.0)
    assert noise["happy"] == (2, 0, 0, 0, 0, 0.0)
    conf = set(rows(store, "SELECT label_original, label_final, action, n FROM label_confusion"))
    assert conf == {("sad", "sad", "review", 1), ("sad", None, "drop", 1), ("happy", "happy", "keep", 2)}


def test_views_work_from_plain_duckdb_and_pandas(store):
    con = duckdb.connect(str(store.root / "catalog.duckdb"), read_only=True)
    try:
        df = con.execute("SELECT * FROM latest_verdicts ORDER BY sample_id").df()
    finally:
        con.close()
    assert list(df["sample_id"]) == ["a", "b", "c", "d"]
    assert df.loc[df.sample_id == "b", "source"].item() == "human"


def _mini(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE TABLE samples AS SELECT * FROM (VALUES ('a','happy'),('b','sad'),('c','happy'),('d',NULL)) t(sample_id, label_original)")
    con.execute("CREATE TABLE latest_verdicts AS SELECT * FROM (VALUES ('a','sad','relabel'),('d',NULL,'review')) t(sample_id, label_final, action)")
    con.execute("""CREATE TABLE faces AS SELECT * FROM (VALUES ('a',0,true,['blurry','tiny'],'f'),('a',1,false,['tiny'],'f'),
                   ('b',0,true,[],'f'),('c',0,true,[],'f')) t(sample_id, face_index, is_primary, quality_flags, run_id)""")
    con.execute("""CREATE TABLE aus AS SELECT * FROM (VALUES ('a',0,1,0),('a',1,0,0),('b',0,0,1),('c',0,1,NULL))
                   t(sample_id, face_index, AU06_c, AU12_c)""")
    con.execute("CREATE TABLE rejects AS SELECT * FROM (VALUES ('x.png','ingest','not_an_image','bad','r0')) t(source_ref, stage, reason_code, message, run_id)")


def test_au_prevalence_sql_uses_primary_faces_and_both_label_sources():
    con = duckdb.connect()
    _mini(con)
    got = {(s, lab, au): (n, k, p) for s, lab, au, n, k, p in con.execute(views.AU_PREVALENCE_SQL).fetchall()}
    # original labels: happy = a (primary face 0: AU06) + c (AU06, AU12 unknown); sad = b (AU12)
    assert got[("original", "happy", "AU06")] == (2, 2, 1.0)
    assert got[("original", "happy", "AU12")] == (1, 0, 0.0)  # c's AU12 is unknown (NULL): not counted
    assert got[("original", "sad", "AU12")] == (1, 1, 1.0)
    # final labels: a relabelled happy -> sad; d has no label and no face
    assert got[("final", "sad", "AU06")] == (2, 1, 0.5)
    assert got[("final", "happy", "AU06")] == (1, 1, 1.0)
    assert all(lab is not None for _s, lab, _au in got)


def test_quality_issues_sql_explodes_flags_and_adds_rejects():
    con = duckdb.connect()
    _mini(con)
    got = sorted(con.execute("SELECT ref, face_index, source, issue FROM (" + views.QUALITY_ISSUES_SQL + ")").fetchall(),
                 key=str)
    assert got == sorted([("a", 0, "faces", "blurry"), ("a", 0, "faces", "tiny"), ("a", 1, "faces", "tiny"),
                          ("x.png", None, "rejects", "not_an_image")], key=str)


@pytest.mark.skipif("aus" not in contract_tables() or "faces" not in contract_tables(),
                    reason="faces/aus contracts are not in data_contracts/ yet")
def test_face_views_on_a_synthetic_store(tmp_path):
    s = make_demo_store(tmp_path / "demo", n_samples=14)
    prev = rows(s, "SELECT label, au, n_faces FROM au_prevalence_by_label WHERE label_source = 'original'")
    assert prev and all(n == 2 for lab, _au, n in prev if lab == "neutral")  # s000, s007
    issues = rows(s, "SELECT source, issue, count(*) FROM quality_issues GROUP BY ALL ORDER BY 1")
    assert ("faces", "blurry", 3) in issues  # s000, s005, s010
    assert ("rejects", "not_an_image", 1) in issues
