"""Issue 16: the dataset-issue search's per-image work (crop pHashes, the model's crop embeddings) on a task runner.

On a Dask LocalCluster of 2 worker processes (ferclean.stage_executor) the faces parts are computed in the worker
processes, one task a part, and the stage writes the same rows and gathers the same signals as in this process; a
`curate` run with the Dask task runner says in its dataset_issues summary that the per-image work ran there.
"""

from __future__ import annotations

import io
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from test_dataset_issues_scale import face_row, sample_rows, smooth, write_in_parts

from ferclean.dataset_issues import DatasetIssuesConfig, run_dataset_issues
from ferclean.dataset_issues import samples as S
from ferclean.runs import open_run
from ferclean.store import Store

pytest.importorskip("distributed")
pytest.importorskip("torch")

N = 24
SIGNALS = ("phash", "mirror", "pixel_std", "hashed", "hash_from_crop", "no_detection", "detected", "has_face_row",
           "quality")


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def out_with_model(tmp_path_factory) -> Store:
    """A small OUT: 24 samples (image files; pairs of copies, a mirrored one, blanks), their primary faces in
    three `faces` parts (one sample without a face row, one face of no sample) and a tiny trained model."""
    from test_train import tiny_cfg, toy_images

    from ferclean.model_dir import ModelDir
    from ferclean.train.engine import fit
    from ferclean.train.model_io import save_model

    root = tmp_path_factory.mktemp("dask_issues")
    img = root / "img"
    img.mkdir()
    paths, crops = [], []
    for i in range(N):
        arr = smooth(i // 2) if i < 16 else np.full((48, 48), 90 + i, np.uint8)
        arr = arr[:, ::-1].copy() if i == 5 else arr
        Image.fromarray(arr).save(img / f"{i}.png")
        paths.append(str(img / f"{i}.png"))
        crops.append(_png(arr[2:46, 2:46]))
    store = Store(root / "out")
    write_in_parts(store, sample_rows(N, seed=3, paths=paths), 2)
    detectors, flag_sets = ["dlib", "fastlm", "full_frame", "dlib"], [[], ["tiny"], ["blurry"]]
    faces = [face_row(f"id{i:06d}", crops[i], detectors[i % 4], flag_sets[i % 3]) for i in range(N) if i != 7]
    faces.append(face_row("id000999", crops[0], "dlib", []))  # a face of no sample
    for k, chunk in enumerate([faces[:9], faces[9:17], faces[17:]]):
        store.write_part("faces", f"f{k}", pa.Table.from_pylist(chunk))
    x, y = toy_images(30)
    cfg = tiny_cfg(epochs=1, num_threads=1)
    save_model(fit(x, y, "ce", cfg), cfg, [], ModelDir.of_run(store.root).path)
    return store


@pytest.fixture(scope="module")
def cluster_executor():
    """A StageExecutor on a LocalCluster of 2 single-threaded worker processes (module-wide: started once)."""
    from distributed import Client, LocalCluster

    from ferclean.stage_executor import StageExecutor

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield StageExecutor(client.get_executor(pure=False), "test cluster", 2)  # not set: each test sets it


def _signals(store: Store, cfg: DatasetIssuesConfig, runner=None):
    from ferclean.dataset_issues.embeddings import load_embedder
    from ferclean.dataset_issues.face_parts import gather_face_signals
    from ferclean.dataset_issues.signals import Signals
    from ferclean.model_dir import ModelDir

    model = ModelDir.of_run(store.root)
    sig = Signals(N)
    if runner is None:
        run = gather_face_signals(store, S.read_samples(store).index, sig, cfg, load_embedder(model, cfg.embed_batch))
    else:
        run = gather_face_signals(store, S.read_samples(store).index, sig, cfg, None, runner, str(model.path))
    return sig, run


def test_face_signals_on_a_local_cluster_equal_this_process_and_ran_in_its_workers(out_with_model, cluster_executor):
    cfg = DatasetIssuesConfig(hash_source="auto", embed_batch=4, tasks_in_flight=2)
    here, here_run = _signals(out_with_model, cfg)
    there, there_run = _signals(out_with_model, cfg, cluster_executor)
    for name in SIGNALS:
        np.testing.assert_array_equal(getattr(there, name), getattr(here, name), err_msg=name)
    assert here.embedding is not None and there.embedding is not None
    np.testing.assert_array_equal(there.embedding.rows(), here.embedding.rows())  # merged in the same order
    np.testing.assert_array_equal(there.embedding.dense(N), here.embedding.dense(N))
    assert len(here.embedding) == N - 1 and here.hash_from_crop.sum() == N - 1  # sample 7 has no face row
    assert here_run.where == "this process" and here_run.pids == [os.getpid()] and here_run.parts == 3
    assert there_run.where == "test cluster" and there_run.parts == 3
    # every part was computed in a worker process, none here
    assert there_run.pids and os.getpid() not in there_run.pids
    assert there_run.worker_cpu_s > 0


def test_stage_rows_on_a_local_cluster_equal_this_process(out_with_model, cluster_executor):
    from ferclean.stage_executor import current_executor, stage_executor

    cfg = DatasetIssuesConfig(hash_source="auto", embed_batch=4, embed_duplicates=True, embed_cosine_min=0.99)
    rows, summaries = {}, {}
    for kind in ("here", "cluster"):
        ctx = stage_executor(*cluster_executor) if kind == "cluster" else nullcontext()
        with ctx, open_run(out_with_model, "dataset_issues", {}) as run:
            assert (current_executor() is not None) == (kind == "cluster")
            summaries[kind] = run_dataset_issues(out_with_model, run, cfg, progress=False)
        rows[kind] = [{k: v for k, v in r.items() if k != "run_id"}
                      for r in out_with_model.read("dataset_issues").to_pylist()]
    assert rows["here"] == rows["cluster"]
    assert {r["issue_type"] for r in rows["here"]} >= {"exact_duplicate", "near_duplicate", "not_a_face"}
    assert summaries["here"]["per_image_work_in"] == "this process"
    assert summaries["cluster"]["per_image_work_in"] == "test cluster"
    assert summaries["cluster"]["model_used"] and summaries["here"]["model_used"]
    # the file pHash, HOG tests and image face-space vectors ran as tasks too (each phase was reached)
    assert {"hash_images", "face_space_detect", "face_space_image", "face_space_hog"} <= set(
        summaries["cluster"]["phases"]["wall_s"])
    assert os.getpid() not in summaries["cluster"]["face_signals_pids"]
    drop = {"per_image_work_in", "face_signals_pids", "face_signals_worker_cpu_s", "face_signals_worker_wall_s", "phases"}
    same = lambda s: {k: v for k, v in s.items() if k not in drop and not k.endswith("_s")}
    assert same(summaries["here"]) == same(summaries["cluster"])


def test_in_order_yields_in_submission_order_with_bounded_futures():
    """in_order merges in task order whatever order the tasks finish in, never holding more than in_flight."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from ferclean.dataset_issues.task_map import in_order

    live, peak, lock = [0], [0], threading.Lock()

    def task(i: int) -> int:
        time.sleep(0.02 * ((7 - i) % 4))  # later tasks often finish first
        return i * i

    with ThreadPoolExecutor(3) as ex:
        def submit(i: int):
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            return ex.submit(task, i)

        got = []
        for i, r in in_order(submit, 8, 3):
            got.append((i, r))
            with lock:
                live[0] -= 1
    assert got == [(i, i * i) for i in range(8)]
    assert peak[0] <= 3


@pytest.mark.slow  # a tiny curate run up to dataset_issues on the Dask task runner (~40 s on 2 busy cores)
def test_curate_on_dask_computes_the_dataset_issue_signals_on_the_cluster(tmp_path: Path):
    pytest.importorskip("prefect_dask")
    from conftest import two_class_folder

    from flows.curate import curate_flow

    src = tmp_path / "src"
    two_class_folder(src, 8)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("faces: {shard_size: 4, contact_sheet_n: 0}\n"
                   "train: {epochs: 1, width: 4, folds: 2, batch_size: 4, methods: [ce], final_method: ce, "
                   "checkpoint: false, input_size: 24, num_threads: 1}\n")
    res = curate_flow(source=str(src), out=str(tmp_path / "out"), config_file=str(cfg), task_runner="dask",
                      workers=2, retries=0, retry_delay_s=0.0, until="dataset_issues")
    summary = res["stages"]["dataset_issues"]["summary"]
    assert summary["per_image_work_in"] == "dask LocalCluster of 2 worker processes"
    assert summary["faces_used"] and summary["model_used"] and summary["face_parts"] >= 2
    assert summary["face_signals_pids"] and os.getpid() not in summary["face_signals_pids"]
    assert res["stages"]["train"]["summary"]["folds_trained_in"] == "dask LocalCluster of 2 worker processes"


def test_undo_low_trim_threshold_only_where_dask_set_it(monkeypatch):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for its workers; the per-part task gives glibc its usual thresholds
    back there (and leaves a plain process alone)."""
    import ctypes.util

    from ferclean.memory import LOW_TRIM_ENV, undo_low_trim_threshold

    monkeypatch.delenv(LOW_TRIM_ENV, raising=False)
    assert undo_low_trim_threshold.__wrapped__() is False
    if not ctypes.util.find_library("c"):
        pytest.skip("no C library to call mallopt in")
    monkeypatch.setenv(LOW_TRIM_ENV, "65536")
    assert undo_low_trim_threshold.__wrapped__() is True


def test_cached_embedder_loads_once_per_model_folder_batch_and_model_file(tmp_path, monkeypatch):
    import ferclean.dataset_issues.face_parts as fp
    from ferclean.model_dir import ModelDir

    loads = []
    monkeypatch.setattr(fp, "load_embedder", lambda folder, batch: loads.append((str(folder), batch)) or len(loads))
    monkeypatch.setattr(fp, "_EMBEDDERS", {})
    md = ModelDir(tmp_path / "m")
    md.path.mkdir()
    md.meta_path.write_text("{}")
    md.network_path.write_bytes(b"1")
    first = fp.cached_embedder(str(md.path), 8)
    assert fp.cached_embedder(str(md.path), 8) == first and len(loads) == 1  # once per process
    fp.cached_embedder(str(md.path), 16)  # another embed_batch
    assert len(loads) == 2
    md.network_path.write_bytes(b"retrained")  # a new model in the same folder (other size)
    fp.cached_embedder(str(md.path), 16)
    assert len(loads) == 3 and len(fp._EMBEDDERS) == 1  # one model held at a time
