"""relabel-collection on a Dask LocalCluster of 2 worker processes gives the same tables as the
default (thread) runner: the image stages' shards and the score stage's shards run in the Dask workers
(each score shard's compact file names the process that wrote it), every table compared (run ids and
timestamps aside)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import two_class_folder, write_png

from ferclean.contracts import contract_tables, load_contract
from ferclean.score_shards import compact_dir, compact_info
from ferclean.store import Store

pytest.importorskip("prefect")
pytest.importorskip("prefect_dask")

FEAT_DATA = Path(list(importlib.util.find_spec("feat").submodule_search_locations)[0]) / "tests" / "data"
FAST = {"retries": 0, "retry_delay_s": 0.0}
TINY = ("faces: {shard_size: 2, contact_sheet_n: 0}\n"
        "train: {epochs: 1, width: 4, folds: 2, batch_size: 4, methods: [ce], final_method: ce, "
        "checkpoint: false, input_size: 24, num_threads: 1}\n"
        "score: {batch_size: 2}\n")
VOLATILE = {"run_id", "created_at", "decided_at", "started_at", "finished_at", "computed_at", "written_at"}


def _table(store: Store, name: str) -> pa.Table:
    t = store.read(name)
    t = t.drop_columns([c for c in t.column_names if c in VOLATILE or pa.types.is_timestamp(t.schema.field(c).type)])
    keys = [k for k in load_contract(name).primary_key if k in t.column_names] or t.column_names[:1]
    return t.sort_by([(k, "ascending") for k in keys])


@pytest.mark.slow  # ~2 min on 2 cores: a 1-epoch curate for the model, then two scoring runs, one on Dask
def test_relabel_collection_on_dask_matches_default(tmp_path: Path):
    pytest.importorskip("ferclean.train")
    from flows.curate import curate_flow
    from flows.relabel_collection import relabel_collection_flow

    train = tmp_path / "train"
    two_class_folder(train, 12)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    curate_flow(source=str(train), out=str(out), config_file=str(cfg), **FAST)

    new = tmp_path / "new"
    for i in range(6):
        write_png(new / f"web{i}.png", (48, 48), seed=100 + i)
    photo = cv2.imread(str(FEAT_DATA / "single_face.jpg"))
    cv2.imwrite(str(new / "photo.jpg"), cv2.resize(photo, (286, 281)))
    (new / "empty.jpg").write_bytes(b"")
    runs, writers = {}, {}
    for kind in ("default", "dask"):
        res = relabel_collection_flow(source=str(new), out=str(tmp_path / kind), model_dir=str(out / "model"),
                                      config_file=str(cfg), task_runner=kind, workers=2, **FAST)
        assert res["stages"]["faces"]["shards"]["computed"] == 4  # 7 samples in shards of 2
        assert res["stages"]["score"]["shards"]["computed"] == 4  # the score shards were mapped tasks too
        assert res["stages"]["score"]["summary"]["shards"]["skipped"] == 4  # ... so the stage itself scored none
        runs[kind] = Store(tmp_path / kind)
        writers[kind] = {compact_info(p)["written_by"]["pid"] for p in compact_dir(runs[kind]).glob("*.parquet")}
    compared = []
    for name in contract_tables():
        if name == "runs" or not runs["default"].count(name):
            continue
        a, b = _table(runs["default"], name), _table(runs["dask"], name)
        assert a.equals(b), name
        compared.append(name)
    assert {"samples", "faces", "aus", "predictions", "relabels", "rejects"} <= set(compared)
    preds = runs["default"].read("predictions")
    scored = preds.filter(pc.equal(preds["method"], "ce"))
    assert 0 < scored.num_rows == runs["default"].count("relabels")  # every scored sample judged once
    # the default runner scores in this process's threads; on Dask every score shard ran in a worker process
    assert writers["default"] == {os.getpid()}
    assert writers["dask"] and os.getpid() not in writers["dask"]
    status = {k: [r["status"] for r in s.read("runs").to_pylist()] for k, s in runs.items()}
    assert status == {"default": ["completed"], "dask": ["completed"]}
