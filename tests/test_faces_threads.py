"""The faces stage under threads: one dlib backend per thread, and a stress run of the stage's
shards on a thread pool (what Prefect's default task runner does with `--workers N`).

Before the fix, `get_backend` was an `lru_cache`: every thread got the same dlib HOG detector,
whose scan state lives inside the object, and the process died (`free(): invalid size`, exit 134).
The stress run executes in a subprocess so such an abort fails this test instead of killing pytest.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ferclean.faces.backends import get_backend

FEAT_DATA = Path(list(importlib.util.find_spec("feat").submodule_search_locations)[0]) / "tests" / "data"
ROOT = Path(__file__).resolve().parents[1]


def test_get_backend_is_one_object_per_thread():
    mine = get_backend("dlib")
    assert get_backend("dlib") is mine  # cached within a thread
    others: list[object] = []
    ts = [threading.Thread(target=lambda: others.append(get_backend("dlib"))) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(others) == 2
    assert all(o is not mine for o in others) and others[0] is not others[1]
    assert all(type(o).__name__ == "DlibBackend" for o in others)
    cnn: list[object] = []
    t = threading.Thread(target=lambda: cnn.append(get_backend("dlib_cnn")))
    t.start()
    t.join()
    assert cnn[0] is not get_backend("dlib_cnn")  # the MMOD second chance is per thread too


STRESS = textwrap.dedent("""
    import hashlib, sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    import cv2, numpy as np, pyarrow as pa
    from ferclean.faces import FacesConfig
    from ferclean.faces.stage import faces_shard, shard_plan
    from ferclean.shards import process_shard
    from ferclean.store import Store

    feat, tmp = Path(sys.argv[1]), Path(sys.argv[2])
    names = ["single_face.jpg", "multi_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "15-f13-anc-ph.jpg",
             "45-m7-di-ph.jpg", "BWPictureHuman.jpg"]
    rng = np.random.default_rng(0)
    (tmp / "imgs").mkdir(parents=True)
    rows = []
    for k in range(36):  # the photos at several sizes, some pasted off-centre into a larger frame
        img = cv2.imread(str(feat / names[k % len(names)]))
        f = rng.uniform(250, 520) / max(img.shape[:2])
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        if k % 3 == 2:
            h, w = img.shape[:2]
            frame = np.full((h + 160, w + 200, 3), rng.integers(0, 255), np.uint8)
            y, x = int(rng.integers(0, 160)), int(rng.integers(0, 200))
            frame[y:y + h, x:x + w] = img
            img = frame
        p = tmp / "imgs" / f"p{k:02d}.jpg"
        cv2.imwrite(str(p), img)
        rows.append({"sample_id": f"s{k:02d}", "source_path": str(p),
                     "content_sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "split": "train",
                     "label_original": "happy", "label_raw": "happy", "collection": "t", "width": img.shape[1],
                     "height": img.shape[0], "channels": 3, "source_row": k, "run_id": "ingest-test"})
    results = {}
    for workers in (4, 1):
        store = Store(tmp / f"out{workers}")
        store.write_part("samples", "t", pa.Table.from_pylist(rows))
        cfg = FacesConfig(shard_size=2, workers=workers, landmarks="dlib", mmod=False)  # padded + rotated HOG passes
        shards, job = shard_plan(store, cfg, "run-test")
        with ThreadPoolExecutor(max_workers=workers) as pool:  # as Prefect's ThreadPoolTaskRunner does
            list(pool.map(lambda s: process_shard(store, s, "faces", faces_shard, job), shards))
        t = store.read("faces", ["sample_id", "face_index", "bbox", "landmarks68"]).sort_by(
            [("sample_id", "ascending"), ("face_index", "ascending")])
        results[workers] = t.to_pylist()
    assert len(shards) == 18, len(shards)
    assert len(results[4]) >= 20, len(results[4])  # most photos have a face that HOG finds
    assert results[4] == results[1], "threaded faces differ from the sequential run"
    print("stress ok", len(results[4]), "faces")
""")


def test_faces_shards_on_a_thread_pool_do_not_crash_and_match_sequential(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", STRESS, str(FEAT_DATA), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        pytest.fail(f"stress run exited {proc.returncode} (negative = killed by signal):\n{proc.stderr[-3000:]}")
    assert "stress ok" in proc.stdout
