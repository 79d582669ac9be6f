"""One owner of "the primary face": train, au_graph, relabel and dataset_issues read the same face.

Regression (issue 15): on a two-face photo whose primary face is face 1, training took face 1's
crop but face 0's AUs ("primary is face 0 by convention").
"""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ferclean.primary import primary_aus, primary_faces, primary_sample_map
from ferclean.store import Store
from ferclean.train.stage import load_inputs

CLASSES = ["neutral", "happy", "sad"]


def _write(store: Store, table: str, t: pa.Table) -> None:
    d = store.table_dir(table)
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, d / "part-all.parquet")


def two_face_store(tmp_path) -> Store:
    """s0: one face. s1: two faces, the primary is face 1 (a bigger face off the first box)."""
    store = Store(tmp_path / "out")
    store.write_part("samples", "all", pa.table({
        "sample_id": ["s0", "s1"], "source_path": ["/x/0.png", "/x/1.png"], "content_sha256": ["0" * 64] * 2,
        "split": ["train"] * 2, "label_original": ["happy", "sad"], "label_raw": ["happy", "sad"],
        "collection": ["toy"] * 2, "width": [64] * 2, "height": [64] * 2, "channels": [1] * 2,
        "source_row": [0, 1], "run_id": ["r0"] * 2,
    }))
    crop = {v: cv2.imencode(".png", np.full((16, 16), v, np.uint8))[1].tobytes() for v in (10, 100, 200)}
    _write(store, "faces", pa.table({
        "sample_id": ["s0", "s1", "s1"], "face_index": pa.array([0, 0, 1], pa.int16()),
        "is_primary": [True, False, True], "crop_png": [crop[10], crop[100], crop[200]],
        "quality_flags": [[], ["tiny"], ["blurry"]], "run_id": ["r0"] * 3,
    }))
    _write(store, "aus", pa.table({
        "sample_id": ["s1", "s0", "s1"], "face_index": pa.array([0, 0, 1], pa.int16()),
        "backend": ["geometric"] * 3,
        "AU12_r": pa.array([0.5, 1.0, 4.0], pa.float32()), "AU12_c": pa.array([0, 0, 1], pa.int8()),
        "run_id": ["r0"] * 3,
    }))
    return store


def test_training_inputs_take_the_primary_faces_crop_and_its_aus(tmp_path):
    store = two_face_store(tmp_path)
    inputs = load_inputs(store, CLASSES, splits=None, input_size=16)
    i = inputs.sample_ids.index("s1")
    assert int(inputs.images[i].mean()) == 200  # face 1's crop, not face 0's (100)
    assert inputs.au_names == ["AU12"] and inputs.intensity_names == ["AU12"]
    assert inputs.aus[i].tolist() == [1.0]  # face 1's AUs, not face 0's
    assert inputs.au_intensity[i].tolist() == [4.0]
    assert inputs.au_intensity[inputs.sample_ids.index("s0")].tolist() == [1.0]


def test_every_reader_gets_the_same_face(tmp_path):
    store = two_face_store(tmp_path)
    faces = primary_faces(store, ["crop_png"]).to_pydict()
    assert dict(zip(faces["sample_id"], faces["face_index"], strict=True)) == {"s0": 0, "s1": 1}
    aus = primary_aus(store, ["AU12_r"]).to_pydict()
    assert dict(zip(aus["sample_id"], aus["AU12_r"], strict=True)) == {"s0": 1.0, "s1": 4.0}
    assert primary_sample_map(store, "quality_flags") == {"s0": [], "s1": ["blurry"]}


def test_au_graph_counts_the_primary_faces_aus(tmp_path):
    from ferclean.au_graph import AuGraphConfig, run_au_graph
    from ferclean.runs import open_run

    store = two_face_store(tmp_path)
    with open_run(store, "au_graph", {}) as run:
        summary = run_au_graph(store, run, AuGraphConfig(plot=False), progress=False)
    assert summary["faces"] == 2 and summary["never_present"] == []  # AU12 present on s1's primary face


def test_without_a_faces_table_face_0_stands_in(tmp_path):
    store = two_face_store(tmp_path)
    for f in store.part_files("faces"):
        f.unlink()
    aus = primary_aus(store, ["AU12_r"]).to_pydict()
    assert dict(zip(aus["sample_id"], aus["AU12_r"], strict=True)) == {"s0": 1.0, "s1": 0.5}


def test_primary_faces_part_by_part_are_the_whole_tables_in_reading_order(tmp_path):
    """primary_face_parts + iter_primary_faces(part=...) (one task a faces part, issue 16d2) give the same rows in
    the same order as the whole-table stream; keys whose file names sort differently from the keys keep the files'
    order; without is_primary the whole table is one unit."""
    from ferclean.primary import iter_primary_faces, primary_face_parts

    store = Store(tmp_path / "out")
    assert primary_face_parts(store) == []
    rows = lambda ids, prim: pa.table({"sample_id": ids, "face_index": pa.array([0] * len(ids), pa.int16()),
                                       "is_primary": prim, "quality_flags": [[]] * len(ids)})
    _write(store, "faces", rows(["a", "b"], [True, False]))  # part-all
    d = store.table_dir("faces")
    pq.write_table(rows(["c", "d", "e"], [True, True, None]), d / "part-a-b.parquet")
    pq.write_table(rows(["f"], [True]), d / "part-a.parquet")
    parts = primary_face_parts(store)
    assert parts == ["a-b", "a", "all"]  # the files' order ("part-a-b.parquet" < "part-a.parquet")
    whole = [r for t in iter_primary_faces(store, ["quality_flags"], 2) for r in t.column("sample_id").to_pylist()]
    each = [r for k in parts for t in iter_primary_faces(store, ["quality_flags"], 2, part=k)
            for r in t.column("sample_id").to_pylist()]
    assert whole == each == ["c", "d", "f", "a"]
    plain = Store(tmp_path / "plain")
    _write(plain, "faces", rows(["a"], [True]).drop_columns(["is_primary"]))
    assert primary_face_parts(plain) == [None]
