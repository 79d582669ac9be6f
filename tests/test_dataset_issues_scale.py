"""Issue 16: the dataset-issue search holds the samples compactly (ferclean.dataset_issues.samples) and gives
the same answers as the per-sample Python lists and dict it replaced."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ferclean.dataset_issues import DatasetIssuesConfig, run_dataset_issues
from ferclean.dataset_issues import samples as S
from ferclean.dataset_issues.clusters import analyze_clusters, clustered_rows
from ferclean.dataset_issues.phases import PhaseClock
from ferclean.runs import open_run
from ferclean.store import Store


def sample_rows(n: int, seed: int = 0, paths: list[str] | None = None) -> list[dict]:
    rng = np.random.default_rng(seed)
    labels = ["happy", "sad", None, "angry"]
    return [{
        "sample_id": f"id{i:06d}", "source_path": paths[i] if paths else f"/nowhere/{i}.png",
        "content_sha256": f"{int(rng.integers(0, max(2, n // 3))):064x}", "split": ["train", "valid", "test"][i % 3],
        "label_original": labels[int(rng.integers(0, 4))], "label_raw": "x", "collection": "t",
        "width": 40 + i % 7, "height": 48, "channels": 1, "source_row": i, "run_id": "ingest",
    } for i in range(n)]


def write_in_parts(store: Store, rows: list[dict], parts: int) -> None:
    for k, chunk in enumerate(np.array_split(np.arange(len(rows)), parts)):
        store.write_part("samples", f"p{k}", pa.Table.from_pylist([rows[i] for i in chunk]))


def test_sample_index_answers_as_the_dict_it_replaced():
    rng = np.random.default_rng(0)
    ids = [f"s{int(k)}" for k in rng.integers(0, 300, 500)]  # repeated ids: the dict keeps the last row
    index = S.SampleIndex(pa.array(ids))
    ref = {s: i for i, s in enumerate(ids)}
    query = ids[::3] + ["absent", "s-1", ""] + [f"s{k}" for k in range(300)]
    assert index.rows(query).tolist() == [ref.get(q, -1) for q in query]
    assert index.rows(pa.chunked_array([pa.array(query[:10]), pa.array(query[10:])])).tolist() == \
        [ref.get(q, -1) for q in query]
    assert index.rows([]).tolist() == [] and S.SampleIndex(pa.array([], pa.string())).rows(["a"]).tolist() == [-1]


def test_sample_index_resolves_ids_whose_hashes_collide(monkeypatch):
    # a key function with only 3 values: nearly every lookup meets other ids under the same key
    monkeypatch.setattr(S, "id_keys", lambda ids: np.array([len(x) % 3 for x in
                                                           (ids.to_pylist() if hasattr(ids, "to_pylist") else ids)],
                                                          np.uint64))
    ids = ["a", "bb", "ccc", "dddd", "a", "ee", "f"]
    index = S.SampleIndex(pa.array(ids))
    ref = {s: i for i, s in enumerate(ids)}
    query = ["a", "bb", "ccc", "dddd", "ee", "f", "zz", "yyy"]
    assert index.rows(query).tolist() == [ref.get(q, -1) for q in query]


def test_read_samples_is_the_table_in_store_order_across_parts(tmp_path):
    rows = sample_rows(1000)
    store = Store(tmp_path / "out")
    write_in_parts(store, rows, 4)
    whole = store.read("samples")
    sm = S.read_samples(store, batch_size=97)  # batches smaller than a part
    assert sm.n == 1000
    everything = np.arange(1000)
    assert sm.id_list(everything) == whole.column("sample_id").to_pylist()
    assert sm.path_list(everything) == whole.column("source_path").to_pylist()
    assert sm.sha_list(everything) == whole.column("content_sha256").to_pylist()
    assert sm.split_list(everything) == whole.column("split").to_pylist()
    assert sm.label_list(everything) == whole.column("label_original").to_pylist()
    assert sm.areas.tolist() == [w * h for w, h in zip(whole.column("width").to_pylist(),
                                                       whole.column("height").to_pylist(), strict=True)]
    codes = sm.sha_codes()
    shas = whole.column("content_sha256").to_pylist()
    assert all((codes[i] == codes[j]) == (shas[i] == shas[j]) for i in range(0, 1000, 37) for j in range(0, 1000, 41))
    assert sm.index.rows(["id000999", "id000000", "nope"]).tolist() == [999, 0, -1]


def test_sha_codes_are_equal_exactly_where_the_strings_are():
    rng = np.random.default_rng(3)
    digests = [f"{int(x):016x}" + f"{int(y):048x}" for x, y in rng.integers(0, 2**62, (40, 2))]
    same_prefix = [digests[0][:16] + "f" * 48, digests[0][:16] + "e" * 48]  # one key, other strings
    odd = ["not-a-hex-digest", "abc", "", "ABCDEF0123456789" + "0" * 48, "abcdef0123456789" + "0" * 48]
    values = [*digests, *same_prefix, *odd, None, None]
    picks = rng.integers(0, len(values), 3000)
    arr = pa.array([values[i] for i in picks], pa.string())
    for shas, chunk in ((arr, 64), (arr.slice(17, 2000), 333), (arr, 10_000)):  # slices start mid-buffer
        strings = shas.to_pylist()
        codes = S.sha_codes(shas, chunk=chunk)
        first: dict[str, int] = {}
        for i, v in enumerate(strings):
            if v is None:
                continue
            first.setdefault(v, codes[i])
            assert codes[i] == first[v], "equal strings must share a code"
        assert len(set(first.values())) == len(first), "different strings must not share a code"
        null_codes = codes[[i for i, v in enumerate(strings) if v is None]]
        assert len(set(null_codes.tolist())) == len(null_codes)
        assert not set(null_codes.tolist()) & set(first.values()), "a null row equals no other row"
    assert len(S.sha_codes(pa.array([], pa.string()))) == 0


def test_read_samples_of_an_empty_store(tmp_path):
    sm = S.read_samples(Store(tmp_path / "out"))
    assert sm.n == 0 and sm.id_list(np.zeros(0, np.int64)) == [] and len(sm.sha_codes()) == 0


def test_cluster_analysis_of_the_clustered_rows_only_gives_the_same_reports():
    rng = np.random.default_rng(5)
    n = 400
    cluster = rng.integers(0, 260, n)  # many singletons, some pairs and triples
    ids = [f"x{i:04d}" for i in range(n)]
    splits = [["train", "valid", "test"][k] for k in rng.integers(0, 3, n)]
    labels = [[None, "a", "b"][k] for k in rng.integers(0, 3, n)]
    shas = [f"{k:x}" for k in rng.integers(0, 300, n)]
    areas = rng.integers(1, 5, n).tolist()
    rows = clustered_rows(cluster)
    assert rows.tolist() == [i for i in range(n) if (cluster == cluster[i]).sum() >= 2]
    full = analyze_clusters(cluster, ids, splits, labels, shas, areas)
    pick = lambda xs: [xs[i] for i in rows]
    compact = analyze_clusters(cluster[rows], pick(ids), pick(splits), pick(labels), pick(shas), pick(areas))
    assert full and compact == full
    assert clustered_rows(np.zeros(0, np.int64)).tolist() == []


def test_read_samples_makes_no_python_object_per_sample(tmp_path):
    """Python-level allocations (strings, lists, dicts, numpy arrays) of the search's sample view stay near the
    numpy arrays it needs (~30 bytes a row); the earlier lists of ids, paths and shas plus the id -> row dict
    took ~400 bytes a row."""
    n = 60_000
    store = Store(tmp_path / "out")
    write_in_parts(store, sample_rows(n), 3)
    tracemalloc.start()
    sm = S.read_samples(store)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sm.n == n
    # the arrays plus, transiently, one 16,384-id chunk of Python strings while hashing the ids; the old
    # lists + dict measured 324 bytes a sample here, this view 89 with 65,536-id chunks
    assert peak / n < 80, f"{peak / n:.0f} bytes a sample"


def smooth(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 8)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((48, 48), Image.Resampling.BICUBIC).convert("L"))


@pytest.mark.parametrize("parts", [1, 3])
def test_stage_output_does_not_depend_on_how_samples_are_split_in_parts(tmp_path, parts):
    """Same dataset_issues rows whether `samples` is one part or several (rows are found through the id index)."""
    img = tmp_path / "img"
    img.mkdir()
    paths = []
    for i in range(12):
        arr = smooth(i // 2) if i < 8 else np.full((48, 48), 120, np.uint8)  # pairs of copies, then blanks
        p = img / f"{i}.png"
        Image.fromarray(arr[:, ::-1] if i == 3 else arr).save(p)
        paths.append(str(p))

    def run(folder: str, k: int) -> list[dict]:
        store = Store(tmp_path / folder)
        write_in_parts(store, sample_rows(12, seed=2, paths=paths), k)
        with open_run(store, "dataset_issues", {}) as r:
            summary = run_dataset_issues(store, r, DatasetIssuesConfig(), progress=False)
        phases = json.loads((r.dir / "dataset_issues_phases.json").read_text())
        assert {"read_samples", "hash_images", "exact_duplicates", "not_a_face"} <= set(phases["cpu_s"])
        assert summary["phases"]["wall_s"].keys() == phases["wall_s"].keys()
        return [{k: v for k, v in row.items() if k != "run_id"} for row in store.read("dataset_issues").to_pylist()]

    one, split = run("one", 1), run("split", parts)
    assert one == split
    assert {r["issue_type"] for r in one} >= {"near_duplicate", "not_a_face"}


def test_phase_clock_accumulates_and_writes(tmp_path):
    clock = PhaseClock(tmp_path / "p.json")
    for _ in range(2):
        with clock.phase("a"):
            sum(range(10_000))
    with pytest.raises(ValueError), clock.phase("b"):
        raise ValueError  # a failing phase is still recorded
    data = json.loads((tmp_path / "p.json").read_text())
    assert set(data["wall_s"]) == {"a", "b"} and data["cpu_s"]["a"] >= 0 and data["peak_rss_mb_at_end"]["a"] > 0


def face_row(sid: str, crop: bytes, detector: str, flags: list[str]) -> dict:
    """A contract-complete primary `faces` row."""
    return {
        "run_id": "faces", "sample_id": sid, "face_index": 0, "is_primary": True, "n_faces": 1,
        "detector": detector, "score": None if detector == "full_frame" else 1.0,
        "bbox": [0.0, 0.0, 48.0, 48.0], "landmarks5": [0.0] * 10, "landmarks68": [0.0] * 136,
        "align_matrix": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "crop_size": 48, "crop_png": crop,
        "landmarks68_crop": [0.0] * 136, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "blur": 100.0,
        "brightness": 120.0, "contrast": 40.0, "face_px": 48.0, "quality_flags": flags,
    }


def test_face_signals_computed_per_part_and_merged_in_any_order_equal_the_streamed_pass(tmp_path):
    """The per-image face signals are a per-part function (what a task runner could map over faces parts);
    merging the parts' results in any order gives the stage's signals."""
    import io

    from ferclean.dataset_issues.embeddings import EmbeddingBlocks
    from ferclean.dataset_issues.face_parts import gather_face_signals
    from ferclean.dataset_issues.signals import Signals, face_part_signals, merge_face_part

    store = Store(tmp_path / "out")
    write_in_parts(store, sample_rows(10), 2)
    detectors = ["dlib", "fastlm", "full_frame"]
    flag_sets = [[], ["tiny"], ["blurry", "extreme_pose"], ["tiny", "blurry", "extreme_pose"]]
    faces = []
    for i in [*range(9), 42]:  # sample 9 has no face row; id000042 is not a sample
        buf = io.BytesIO()
        Image.fromarray(smooth(i)).save(buf, format="PNG")
        faces.append(face_row(f"id{i:06d}", buf.getvalue(), detectors[i % 3], flag_sets[i % 4]))
    for k, chunk in enumerate([faces[:4], faces[4:7], faces[7:]]):
        store.write_part("faces", f"f{k}", pa.Table.from_pylist(chunk))
    cfg = DatasetIssuesConfig(hash_source="auto")

    def embed(crops):
        return np.stack([np.frombuffer(c[-64:], np.uint8).astype(np.float32)[:8] for c in crops])

    index = S.read_samples(store).index
    streamed = Signals(10)
    assert gather_face_signals(store, index, streamed, cfg, embed).has_faces
    cols = ["sample_id", "detector", "quality_flags", "crop_png"]
    parts = [face_part_signals(pa.Table.from_pylist([{c: f[c] for c in cols} for f in chunk]), cfg, embed)
             for chunk in (faces[:4], faces[4:7], faces[7:])]
    mapped = Signals(10)
    mapped.no_detection[:] = 1.0
    blocks = EmbeddingBlocks(tmp_path)
    for part in reversed(parts):
        merge_face_part(mapped, index, part, blocks)
    for name in ("phash", "mirror", "pixel_std", "hashed", "hash_from_crop", "no_detection", "detected",
                 "has_face_row", "quality"):
        np.testing.assert_array_equal(getattr(mapped, name), getattr(streamed, name), err_msg=name)
    np.testing.assert_array_equal(blocks.dense(10), streamed.embedding.dense(10))
    assert not streamed.has_face_row[9] and streamed.no_detection[9] == 1.0
    assert np.isnan(streamed.no_detection[1]) and streamed.detected[0] and not streamed.detected[2]
    assert streamed.quality.tolist()[:3] == [0.0, 1 / 3, 2 / 3] and streamed.hash_from_crop[:9].all()
