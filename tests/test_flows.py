"""End-to-end tests of the Prefect flows on a tiny image folder (one shared Prefect test server).

They prove: an immediate rerun recomputes nothing; a failure in the middle of the faces stage
leaves a `failed` runs row and no manifest, and the rerun computes only the unfinished shards
and gives the same table as an uninterrupted run; the Dask runner gives the same faces table as
the default runner; each stage publishes a Markdown artifact.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import two_class_folder, write_png

from ferclean import pipeline
from ferclean.stage_cache import read_manifest
from ferclean.store import Store

pytest.importorskip("prefect")

FAST = {"retries": 0, "retry_delay_s": 0.0}


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API for the whole session (it takes ~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """12 grey 48x48 PNGs in label folders (pre-aligned crops: faces uses the full-frame path)."""
    root = tmp_path_factory.mktemp("collection")
    two_class_folder(root, 12)
    return root


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("cfg") / "curate.yaml"
    f.write_text("faces:\n  shard_size: 3\n  contact_sheet_n: 0\n")
    return f


def _curate(collection: Path, out: Path, config_file: Path, **kw):
    from flows.curate import curate_flow

    return curate_flow(source=str(collection), out=str(out), until="faces", config_file=str(config_file),
                       **{**FAST, **kw})


def _mtimes(store: Store) -> dict[str, int]:
    return {str(p.relative_to(store.root)): p.stat().st_mtime_ns for p in store.tables_dir.rglob("*.parquet")}


def _faces(store: Store) -> pa.Table:
    t = store.read("faces")
    return t.drop_columns(["run_id"]).sort_by([("sample_id", "ascending"), ("face_index", "ascending")])


def _runs(store: Store) -> list[dict]:
    return sorted(store.read("runs").to_pylist(), key=lambda r: r["started_at"])


def test_immediate_rerun_recomputes_nothing(prefect_server, collection, config_file, tmp_path):
    out = tmp_path / "out"
    first = _curate(collection, out, config_file)
    assert [k for k, v in first["stages"].items() if v["cached"]] == []
    assert first["stages"]["faces"]["shards"] == {"shards": 4, "skipped": 0, "computed": 4, "rows": 12}
    store = Store(out)
    before = _mtimes(store)
    second = _curate(collection, out, config_file)
    assert {k: v["cached"] for k, v in second["stages"].items()} == {"ingest": True, "faces": True}
    assert second["stages"]["faces"]["summary"] == first["stages"]["faces"]["summary"]
    after = _mtimes(store)
    # Only the runs table gained a part; no stage table file was rewritten.
    assert {k: v for k, v in after.items() if not k.startswith("tables/runs/")} == \
           {k: v for k, v in before.items() if not k.startswith("tables/runs/")}
    runs = _runs(store)
    assert [r["status"] for r in runs] == ["completed", "completed"]
    counts = json.loads(runs[1]["counts"])
    assert counts["stages.faces.cached"] == 1 and "stages.faces.computed" not in counts
    # A config change recomputes the stage (new shard keys) but not the unchanged ingest.
    cfg2 = tmp_path / "c2.yaml"
    cfg2.write_text("faces:\n  shard_size: 6\n  contact_sheet_n: 0\n")
    third = _curate(collection, out, cfg2)
    assert third["stages"]["ingest"]["cached"] and not third["stages"]["faces"]["cached"]
    assert third["stages"]["faces"]["shards"]["computed"] == 2
    assert len(store.part_keys("faces")) == 2  # stale parts of the 3-image shards were removed


_calls: dict[int, int] = {}


def _failing_faces_work(store, config, run_id):  # noqa: ANN001, ANN202
    """The real faces shard plan, with a function that fails on shard 2 (a broken disk, say)."""
    import functools

    from ferclean.faces.stage import shard_work

    work = shard_work(store, config, run_id)
    return pipeline.ShardWork(work.out_table, functools.partial(_fail_on_shard_2, work.fn), work.job, work.shards)


def _fail_on_shard_2(fn, store, shard, job):  # noqa: ANN001, ANN202
    _calls[shard.index] = _calls.get(shard.index, 0) + 1
    if shard.index == 2:
        raise OSError("simulated I/O error on shard 2")
    return fn(store, shard, job)


def test_failure_mid_faces_then_rerun_does_only_unfinished_shards(
    prefect_server, collection, config_file, tmp_path, monkeypatch
):
    ref = tmp_path / "ref"
    _curate(collection, ref, config_file)

    out = tmp_path / "out"
    store = Store(out)
    failing = tuple(dataclasses.replace(s, shard_plan=_failing_faces_work) if s.name == "faces" else s
                    for s in pipeline.CURATE_STAGES)
    monkeypatch.setitem(pipeline.STAGE_SETS, "curate", failing)
    _calls.clear()
    from flows.curate import curate_flow

    state = curate_flow(source=str(collection), out=str(out), until="faces", config_file=str(config_file),
                        retries=1, retry_delay_s=0.0, return_state=True)
    assert state.is_failed()
    assert _calls == {0: 1, 1: 1, 2: 2, 3: 1}  # the bad shard alone was retried
    runs = _runs(store)
    assert len(runs) == 1 and runs[0]["status"] == "failed"
    assert "1 of 4 shards failed" in runs[0]["error"] and "simulated I/O error" in runs[0]["error"]
    assert read_manifest(store, "faces") is None
    assert read_manifest(store, "ingest") is not None
    assert len(store.part_keys("faces")) == 3
    assert not list(store.table_dir("faces").glob(".tmp-*"))  # no half-written part

    monkeypatch.undo()
    again = _curate(collection, out, config_file)
    assert again["stages"]["ingest"]["cached"]
    assert again["stages"]["faces"]["shards"] == {"shards": 4, "skipped": 3, "computed": 1, "rows": 3}
    assert again["stages"]["faces"]["summary"]["rows_written"] == 0  # run_faces found every shard done
    assert _faces(store).equals(_faces(Store(ref)))
    assert [r["status"] for r in _runs(store)] == ["failed", "completed"]


def test_bad_source_gives_failed_run_row(prefect_server, tmp_path, config_file):
    from flows.curate import curate_flow

    out = tmp_path / "out"
    state = curate_flow(source=str(tmp_path / "missing"), out=str(out), until="ingest",
                        config_file=str(config_file), return_state=True, **FAST)
    assert state.is_failed()
    (row,) = _runs(Store(out))
    assert row["status"] == "failed" and "does not exist" in row["error"]
    assert Store(out).count("samples") == 0
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("facez: {shard_size: 3}\n")
    state = curate_flow(source=str(tmp_path), out=str(out), config_file=str(bad_cfg), return_state=True, **FAST)
    assert state.is_failed()
    rows = _runs(Store(out))
    assert len(rows) == 2 and rows[1]["status"] == "failed" and "unknown stages ['facez']" in rows[1]["error"]


@pytest.mark.slow  # ~25 s on 2 cores: two worker processes import OpenCV/dlib
def test_dask_local_cluster_matches_default_runner(prefect_server, collection, config_file, tmp_path):
    pytest.importorskip("prefect_dask")
    default = tmp_path / "default"
    dask = tmp_path / "dask"
    _curate(collection, default, config_file)
    res = _curate(collection, dask, config_file, task_runner="dask", workers=2)
    assert res["stages"]["faces"]["shards"]["computed"] == 4
    assert _faces(Store(dask)).equals(_faces(Store(default)))


def test_stages_publish_markdown_artifacts(prefect_server, collection, config_file, tmp_path):
    from prefect.client.orchestration import get_client

    res = _curate(collection, tmp_path / "out", config_file)

    def latest(key: str) -> dict:
        # A raw filter body with every field set: this server build (fastapi 0.154) rejects the
        # nulls that prefect's client sends for unset filters.
        body = {"artifacts": {"key": {"any_": [key]}}, "flow_runs": {}, "task_runs": {},
                "limit": 1, "offset": 0, "sort": "CREATED_DESC"}
        with get_client(sync_client=True) as client:
            resp = client.request("POST", "/artifacts/filter", json=body)
        resp.raise_for_status()
        (art,) = resp.json()
        return art

    faces = latest("ferclean-curate-faces")
    assert faces["type"] == "markdown" and faces["flow_run_id"] is not None
    assert "full_frame" in faces["data"] and "Detector" in faces["data"]
    ingest = latest("ferclean-curate-ingest")
    assert f"| samples | {res['stages']['ingest']['summary']['samples']} |" in ingest["data"]
    cat = latest("ferclean-curate-catalog")
    assert "| faces | 12 |" in cat["data"]


TINY_TRAIN = ("train: {epochs: 1, width: 4, folds: 2, batch_size: 4, methods: [ce], final_method: ce, "
              "checkpoint: false, input_size: 24, num_threads: 1}\n")


@pytest.mark.slow  # ~40 s on 2 cores: every stage, including a 1-epoch training, then scoring
def test_all_stages_then_relabel_collection(prefect_server, collection, tmp_path):
    from flows.curate import curate_flow
    from flows.relabel_collection import relabel_collection_flow

    pytest.importorskip("ferclean.train")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("faces: {shard_size: 4, contact_sheet_n: 0}\n" + TINY_TRAIN)
    out = tmp_path / "out"
    res = curate_flow(source=str(collection), out=str(out), config_file=str(cfg), **FAST)
    plan = [s.name for s in pipeline.resolve_until(None)]
    assert list(res["stages"]) == plan and "train" in plan and "relabel" in plan
    store = Store(out)
    (run,) = _runs(store)
    assert run["status"] == "completed" and json.loads(run["config"])["configs"]["train"]["epochs"] == 1
    assert store.count("relabels") == 12 and (out / "model" / "model.json").is_file()

    new = tmp_path / "new"
    for i in range(5):
        write_png(new / f"web{i}.png", (48, 48), seed=100 + i)
    new_out = tmp_path / "new_out"
    rc = relabel_collection_flow(source=str(new), out=str(new_out), model_dir=str(out / "model"),
                                 config_file=str(cfg), **FAST)
    assert list(rc["stages"]) == ["ingest", "faces", "aus", "score"]
    nstore = Store(new_out)
    (nrun,) = _runs(nstore)
    assert nrun["kind"] == "relabel-collection" and nrun["status"] == "completed"
    aus_manifest = read_manifest(store, "aus")
    # The model folder carries its own copy of the training run's neutral AU reference, and that is used.
    used = json.loads(nrun["config"])["au_reference"]
    assert used == str(out / "model" / "aus_reference.json")
    assert Path(used).read_text() == Path(aus_manifest.summary["reference_path"]).read_text()
    preds = nstore.read("predictions").to_pylist()
    assert {p["fold"] for p in preds} == {-1}
    # the network's scores and the model folder's AU view (the collection went through the aus stage)
    assert sorted(p["method"] for p in preds) == ["au_view"] * 5 + ["ce"] * 5
    verdicts = nstore.read("relabels").to_pylist()
    assert len(verdicts) == 5 and {v["run_id"] for v in verdicts} == {nrun["run_id"]}
    assert not (new_out / "model").exists() and store.count("relabels") == 12  # no training, training OUT untouched
    again = relabel_collection_flow(source=str(new), out=str(new_out), model_dir=str(out / "model"),
                                    config_file=str(cfg), **FAST)
    assert all(v["cached"] for v in again["stages"].values())
