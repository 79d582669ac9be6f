"""Ingest: every source format, every reject reason, and the count identity."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from ferclean.catalog import query
from ferclean.ingest import IngestConfig, SourceError, detect_format, run_ingest
from ferclean.runs import open_run
from ferclean.store import Store
from tests.conftest import write_png


def ingest(out: Path, **kw):
    store = Store(out)
    with open_run(store, "ingest", {}) as run:
        summary = run_ingest(store, run, IngestConfig(**kw), progress=False)
    return store, run, summary


def samples_and_rejects(store: Store):
    samples = store.read("samples").to_pylist()
    rejects = store.read("rejects").to_pylist()
    return samples, rejects


def reasons(rejects):
    return sorted(r["reason_code"] for r in rejects)


def test_folder_with_labels_and_splits(tmp_path):
    root = tmp_path / "faces"
    write_png(root / "train" / "happy" / "a.png", seed=1)
    write_png(root / "train" / "Sadness" / "b.png", seed=2)
    write_png(root / "test" / "anger" / "c.jpg", seed=3, mode="RGB")
    store, _, summary = ingest(tmp_path / "out", source=str(root))
    assert summary["format"] == "folder" and summary["samples"] == 3
    rows = {r["sample_id"]: r for r in store.read("samples").to_pylist()}
    assert rows["train/happy/a.png"]["label_original"] == "happy"
    assert rows["train/Sadness/b.png"]["label_original"] == "sad"
    assert rows["test/anger/c.jpg"]["split"] == "test"
    assert rows["test/anger/c.jpg"]["channels"] == 3
    assert rows["train/happy/a.png"]["width"] == 16
    assert len(rows["train/happy/a.png"]["content_sha256"]) == 64


def test_unlabelled_folder(tmp_path):
    root = tmp_path / "web"
    write_png(root / "batch1" / "x.png", seed=1)
    write_png(root / "y.png", seed=2)
    store, _, summary = ingest(tmp_path / "out", source=str(root), unlabelled=True)
    rows = store.read("samples").to_pylist()
    assert summary["samples"] == 2
    assert {r["label_original"] for r in rows} == {None}
    assert {r["split"] for r in rows} == {"unlabelled"}


def test_unlabelled_detected_and_weak_labels(tmp_path):
    root = tmp_path / "web"
    write_png(root / "x.png", seed=1)
    assert detect_format(root) == "folder"
    store, _, summary = ingest(tmp_path / "out", source=str(root))
    assert summary["samples"] == 1 and store.read("samples").to_pylist()[0]["label_original"] is None


def test_manifest_keeps_extra_columns(tmp_path):
    root = tmp_path / "ds"
    write_png(root / "img" / "a.png", seed=1)
    write_png(root / "img" / "b.png", seed=2)
    m = root / "labels.csv"
    m.write_text("image_path,split,label,neutral,happiness,NF,note\n"
                 "img/a.png,train,happiness,1,9,0,hi\nimg/b.png,valid,neutral,8,1,,\n")
    store, _, summary = ingest(tmp_path / "out", source=str(m))
    assert summary["format"] == "manifest" and summary["samples"] == 2
    rows = {r["sample_id"]: r for r in store.read("samples").to_pylist()}
    assert rows["img/a.png"]["happiness"] == 9 and rows["img/a.png"]["label_original"] == "happy"
    assert rows["img/b.png"]["NF"] is None and rows["img/b.png"]["split"] == "valid"
    assert rows["img/a.png"]["note"] == "hi"
    cols, res = query(store, "select sum(happiness) from samples")
    assert res == [(10,)]


def test_manifest_sample_id_and_root_option(tmp_path):
    imgs = tmp_path / "imgs"
    write_png(imgs / "a.png")
    m = tmp_path / "meta" / "m.csv"
    m.parent.mkdir()
    m.write_text("sample_id,image_path,label\nS1,a.png,fear\n")
    store, _, _ = ingest(tmp_path / "out", source=str(m), root=str(imgs))
    assert store.read("samples").to_pylist()[0]["sample_id"] == "S1"


def _fer_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows)
    return path


def test_fer2013_pixel_csv_with_votes(tmp_path):
    rng = np.random.default_rng(0)
    px = lambda: " ".join(map(str, rng.integers(0, 256, 48 * 48)))  # noqa: E731
    src = _fer_csv(tmp_path / "fer2013.csv", [("3", px(), "Training"), ("0", px(), "PublicTest"),
                                               ("9", px(), "Training"), ("2", "1 2 3", "PrivateTest")])
    votes = tmp_path / "fer2013new.csv"
    votes.write_text("Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
                     "Training,fer0.png,0,10,0,0,0,0,0,0,0,0\nPublicTest,fer1.png,2,0,0,0,8,0,0,0,0,0\n"
                     "Training,fer2.png,10,0,0,0,0,0,0,0,0,0\nPrivateTest,fer3.png,0,0,0,0,0,0,0,0,0,10\n")
    assert detect_format(src) == "fer2013-csv"
    store, _, summary = ingest(tmp_path / "out", source=str(src), labels=str(votes))
    samples, rejects = samples_and_rejects(store)
    assert summary["input_rows"] == 4 and len(samples) == 2
    assert reasons(rejects) == ["malformed_row", "unknown_label"]
    by = {r["sample_id"]: r for r in samples}
    assert by["fer2013/0000000"]["label_original"] == "happy" and by["fer2013/0000000"]["happiness"] == 10
    assert by["fer2013/0000001"]["split"] == "valid" and by["fer2013/0000001"]["anger"] == 8
    assert by["fer2013/0000000"]["width"] == 48 and Path(by["fer2013/0000000"]["source_path"]).exists()


@pytest.fixture
def broken(tmp_path) -> tuple[Path, int]:
    """A manifest with one good row and one row for each reject reason. Returns (manifest, rows)."""
    root = tmp_path / "ds"
    write_png(root / "ok.png", seed=1)
    write_png(root / "ok2.png", seed=2)
    write_png(root / "big.png", size=(64, 64), seed=3)
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("this is not an image")
    good = (root / "ok.png").read_bytes()
    (root / "trunc.png").write_bytes(good[: len(good) // 2])
    outside = write_png(tmp_path / "outside.png", seed=4)
    os.symlink(outside, root / "link.png")
    lines = [
        "image_path,label,split,votes",
        "ok.png,happy,train,3",          # ok
        "ok2.png,sad,train,1",           # ok
        "missing.png,happy,train,1",     # file_missing
        "empty.png,happy,train,1",       # empty_file
        "text.png,happy,train,1",        # not_an_image
        "trunc.png,happy,train,1",       # truncated_image
        "big.png,happy,train,1",         # too_many_pixels
        "ok.png,bored,train,1",          # unknown_label (and same id as row 1 -> label checked first)
        "ok.png,happy,train,1",          # duplicate_sample_id
        "../outside.png,happy,train,1",  # path_escapes_root (..)
        f"{outside},happy,train,1",      # path_escapes_root (absolute)
        "link.png,happy,train,1",        # path_escapes_root (symlink out of the root)
        "ok2.png,happy,train,1,extra",   # malformed_row (too many fields)
        ",happy,train,1",                # malformed_row (empty image path)
        "ok2.png,happy,moon,1",          # malformed_row (unknown split)
    ]
    m = root / "manifest.csv"
    m.write_text("\n".join(lines) + "\n")
    return m, len(lines) - 1


def test_every_reject_reason_and_count_identity(tmp_path, broken):
    manifest, n_rows = broken
    store, run, summary = ingest(tmp_path / "out", source=str(manifest), max_pixels=1000)
    samples, rejects = samples_and_rejects(store)
    assert summary["input_rows"] == n_rows
    assert len(samples) + len(rejects) == n_rows  # the count identity
    assert len(samples) == 2
    assert reasons(rejects) == sorted([
        "file_missing", "empty_file", "not_an_image", "truncated_image", "too_many_pixels",
        "unknown_label", "duplicate_sample_id", "path_escapes_root", "path_escapes_root",
        "path_escapes_root", "malformed_row", "malformed_row", "malformed_row",
    ])
    assert all(r["stage"] == "ingest" and r["message"] and r["run_id"] == run.run_id for r in rejects)
    # Every reject names its source row, so nothing is anonymous.
    refs = {r["source_ref"].split(" ")[0] + " " + r["source_ref"].split(" ")[1] for r in rejects}
    assert len(refs) == len(rejects)


def test_folder_rejects(tmp_path):
    root = tmp_path / "f"
    write_png(root / "happy" / "a.png", seed=1)
    (root / "happy" / "notes.txt").write_text("hello")
    write_png(root / "bored" / "b.png", seed=2)
    write_png(root / "c.png", seed=3)  # not inside a label folder
    outside = write_png(tmp_path / "o.png")
    os.symlink(outside, root / "happy" / "l.png")
    store, _, summary = ingest(tmp_path / "out", source=str(root))
    samples, rejects = samples_and_rejects(store)
    assert summary["input_rows"] == 5 == len(samples) + len(rejects)
    assert reasons(rejects) == ["not_an_image", "path_escapes_root", "unknown_label", "unknown_label"]


def test_limit_and_streaming_shards(tmp_path):
    root = tmp_path / "f"
    for i in range(25):
        write_png(root / "neutral" / f"{i:02d}.png", seed=i)
    store, _, summary = ingest(tmp_path / "out", source=str(root), shard_size=10, limit=23)
    assert summary["samples"] == 23 and summary["parts"] == 3
    assert len(store.part_files("samples")) == 3


def test_reingest_replaces_samples(tmp_path):
    root = tmp_path / "f"
    write_png(root / "happy" / "a.png")
    out = tmp_path / "out"
    ingest(out, source=str(root))
    write_png(root / "happy" / "b.png", seed=5)
    store, _, _ = ingest(out, source=str(root))
    assert store.count("samples") == 2  # the old part is replaced, not duplicated
    assert store.count("runs") == 2


def test_unusable_source_raises(tmp_path):
    with pytest.raises(SourceError):
        ingest(tmp_path / "out", source=str(tmp_path / "nope"))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(SourceError, match="image path column"):
        ingest(tmp_path / "out", source=str(bad))
    runs = Store(tmp_path / "out").read("runs").to_pylist()
    assert [r["status"] for r in runs] == ["failed", "failed"]


@pytest.mark.shared
def test_real_fer2013_manifest_slice(tmp_path, fer_dir):
    store, _, summary = ingest(tmp_path / "out", source=str(fer_dir / "labels.csv"), limit=300)
    assert summary["samples"] == 300
    cols, rows = query(store, "select count(*) from samples where happiness is not null and NF is not null")
    assert rows == [(300,)]
