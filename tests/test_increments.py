"""Nightly increments: a folder that grows between runs is recomputed only where it changed.

The planning rule is pure (:func:`ferclean.shards.incremental_plan`) and tested on tiny inputs;
then the real faces stage on a growing folder: new images interleaved among old ones (by sample
id) are the only ones computed, deleted images leave the table, replaced ones are recomputed.
Before the change, 3 new rows among 60 recomputed every shard they fell into.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from conftest import write_png

from ferclean.aus import AusConfig, run_aus
from ferclean.faces import FacesConfig, run_faces
from ferclean.ingest import IngestConfig, run_ingest
from ferclean.runs import open_run
from ferclean.shards import incremental_plan, plan_path, plan_shards
from ferclean.store import Store


def pairs(ids: list[str], sha: str = "x") -> list[tuple[str, str]]:
    return [(i, sha) for i in sorted(ids)]


def test_first_plan_is_sorted_chunks():
    shards = incremental_plan("faces", "cfg", pairs(["a", "b", "c", "d", "e"]), [], shard_size=2)
    assert [s.sample_ids for s in shards] == [("a", "b"), ("c", "d"), ("e",)]
    assert len({s.key for s in shards}) == 3 and all(s.derive_from is None for s in shards)


def test_additions_keep_old_shards_and_fill_new_ones():
    first = incremental_plan("faces", "cfg", pairs(["a", "c", "e", "g"]), [], shard_size=2)
    prev = [(s.key, [(i, "x") for i in s.sample_ids]) for s in first]
    second = incremental_plan("faces", "cfg", pairs(["a", "b", "c", "e", "f", "g"]), prev, shard_size=2)
    assert [s.key for s in second[:2]] == [s.key for s in first]  # unchanged: nothing to compute
    assert [s.sample_ids for s in second[2:]] == [("b", "f")]
    # the same inputs plan the same shards (a resumed run finds its parts)
    again = incremental_plan("faces", "cfg", pairs(["a", "b", "c", "e", "f", "g"]), prev, shard_size=2)
    assert [s.key for s in again] == [s.key for s in second]


def test_deleted_and_replaced_samples():
    first = incremental_plan("faces", "cfg", pairs(["a", "b", "c", "d"]), [], shard_size=2)
    prev = [(s.key, [(i, "x") for i in s.sample_ids]) for s in first]
    now = [("a", "x"), ("c", "x"), ("d", "NEW")]  # b deleted, d replaced
    shards = incremental_plan("faces", "cfg", now, prev, shard_size=2)
    derived = [s for s in shards if s.derive_from]
    assert [(s.sample_ids, s.derive_from) for s in derived] == [(("a",), first[0].key), (("c",), first[1].key)]
    assert [s.sample_ids for s in shards if not s.derive_from] == [("d",)]
    assert sorted(i for s in shards for i in s.sample_ids) == ["a", "c", "d"]


def _ingest_and_faces(src: Path, out: Path) -> str:
    store = Store(out)
    with open_run(store, "test", {}) as run:
        run_ingest(store, run, IngestConfig(source=str(src)), progress=False)
        run_faces(store, run, FacesConfig(shard_size=8, contact_sheet_n=0), progress=False)
        run_aus(store, run, AusConfig(shard_size=8, reference_refit_share=0.1), progress=False)
    return run.run_id


def _computed(store: Store, run_id: str, table: str = "faces") -> set[str]:
    t = store.read(table, ["sample_id", "run_id"])
    return set(t.filter(pc.equal(t.column("run_id"), run_id)).column("sample_id").to_pylist())


def test_faces_stage_recomputes_only_what_changed(tmp_path):
    src = tmp_path / "incoming"
    for i in range(0, 120, 2):  # 60 images, even numbers
        write_png(src / "happy" / f"img{i:03d}.png", (48, 48), seed=i)
    out = tmp_path / "out"
    first = _ingest_and_faces(src, out)
    store = Store(out)
    assert len(_computed(store, first)) == 60

    for i in (11, 57, 101):  # three new images whose ids fall inside three different shards
        write_png(src / "happy" / f"img{i:03d}.png", (48, 48), seed=1000 + i)
    second = _ingest_and_faces(src, out)
    new = {"happy/img011.png", "happy/img057.png", "happy/img101.png"}
    assert _computed(store, second) == new
    assert _computed(store, second, "aus") == new  # the AU reference is kept: 3 of 60 faces changed
    assert store.read("faces", ["sample_id"]).num_rows == 63 == store.count("aus")

    (src / "happy" / "img020.png").unlink()  # deleted
    write_png(src / "happy" / "img040.png", (48, 48), seed=4040)  # replaced by another image
    third = _ingest_and_faces(src, out)
    assert _computed(store, third) == {"happy/img040.png"} == _computed(store, third, "aus")
    assert store.count("aus") == 62
    ids = store.read("faces", ["sample_id"]).column("sample_id").to_pylist()
    assert len(ids) == 62 and "happy/img020.png" not in ids and len(set(ids)) == 62
    plan = pq.read_table(plan_path(store, "faces"))
    assert plan.num_rows == 62 and len(set(plan.column("config").to_pylist())) == 1


def _ingested(tmp_path, size: int) -> Store:  # noqa: ANN001
    """A store with six ingested `size`-px images under happy/."""
    src = tmp_path / "incoming"
    for i in range(6):
        write_png(src / "happy" / f"img{i}.png", (size, size), seed=i)
    store = Store(tmp_path / "out")
    with open_run(store, "test", {}) as run:
        run_ingest(store, run, IngestConfig(source=str(src)), progress=False)
    return store


def test_plan_ignores_a_plan_made_under_another_config(tmp_path):
    store = _ingested(tmp_path, size=48)
    a = plan_shards(store, "faces", {"v": 1}, shard_size=4)
    b = plan_shards(store, "faces", {"v": 2}, shard_size=4)
    assert {s.key for s in a}.isdisjoint({s.key for s in b})
    assert [s.key for s in plan_shards(store, "faces", {"v": 2}, shard_size=4)] == [s.key for s in b]


# -- a worker process that dies --------------------------------------------------------------
def _dies_once(store: Store, shard, marker: str):  # noqa: ANN001, ANN202
    """Shard function: the worker of shard 1 kills itself (a native crash stand-in), once, or every
    time when the marker's name ends in 'always'. Other shards give an empty faces part."""
    import os
    import signal

    from ferclean.contracts import load_contract

    if shard.index == 1 and (marker.endswith("always") or not Path(marker).exists()):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return load_contract("faces").empty()


def test_a_dying_worker_is_retried_then_fails_the_stage(tmp_path):
    import pytest

    from ferclean.shards import WorkerDied, run_sharded

    store = _ingested(tmp_path, size=16)
    shards = plan_shards(store, "faces", {"t": 1}, shard_size=2)
    res = run_sharded(store, shards, "faces", _dies_once, str(tmp_path / "once"), workers=2, progress=False)
    assert res["shards"] == 3 and all(store.has_part("faces", s.key) for s in shards)

    store2 = Store(tmp_path / "out2")
    with open_run(store2, "test", {}) as run:
        run_ingest(store2, run, IngestConfig(source=str(tmp_path / "incoming")), progress=False)
    shards = plan_shards(store2, "faces", {"t": 2}, shard_size=2)
    with pytest.raises(WorkerDied, match="a worker process died 2 times"):
        run_sharded(store2, shards, "faces", _dies_once, str(tmp_path / "always"), workers=2, progress=False,
                    worker_retries=1)
    assert not store2.has_part("faces", shards[1].key)
