"""The cross-fitted folds on a Dask cluster (`--task-runner dask`): the same out-of-fold scores as in this
process, and the train stage says where its folds trained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import two_class_folder

pytest.importorskip("distributed")

TINY = ("faces: {shard_size: 4, contact_sheet_n: 0}\n"
        "train: {epochs: 1, width: 4, folds: 2, batch_size: 4, methods: [ce], final_method: ce, "
        "checkpoint: false, input_size: 24, num_threads: 1}\n")


def test_crossfit_on_a_dask_local_cluster_matches_this_process():
    from test_train import tiny_cfg, toy_images

    from ferclean.stage_executor import current_executor, dask_executor
    from ferclean.train import crossfit

    x, y = toy_images(36)
    here = crossfit(x, y, "ce", tiny_cfg(epochs=1, folds=3, fold_workers=1))
    assert here["runner"] == "this process"
    with dask_executor(None, 2) as where:
        assert current_executor() is not None
        there = crossfit(x, y, "ce", tiny_cfg(epochs=1, folds=3, fold_workers=1))
    assert current_executor() is None
    assert "dask LocalCluster of 2 worker processes" == where == there["runner"]
    np.testing.assert_allclose(there["probs"], here["probs"], atol=1e-5)
    assert sorted({h["fold"] for h in there["history"]}) == [0, 1, 2]


@pytest.mark.slow  # three tiny curate runs, two under the dask runner
def test_curate_with_the_dask_runner_trains_its_folds_on_the_cluster(tmp_path: Path, monkeypatch):
    from flows.curate import curate_flow

    import ferclean.stage_executor as se
    from ferclean.store import Store

    started = []
    real = se.dask_stage_executor
    monkeypatch.setattr(se, "dask_stage_executor", lambda *a: started.append(a) or real(*a))
    src = tmp_path / "src"
    two_class_folder(src, 8)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY)
    preds = {}
    for kind in ("default", "dask"):
        res = curate_flow(source=str(src), out=str(tmp_path / kind), config_file=str(cfg), task_runner=kind,
                          workers=2, retries=0, retry_delay_s=0.0, until="train")
        where = res["stages"]["train"]["summary"]["folds_trained_in"]
        assert ("dask LocalCluster of 2 worker processes" if kind == "dask" else "this process") == where
        t = Store(tmp_path / kind).read("predictions").to_pandas()
        t = t[t.fold >= 0].sort_values(["method", "sample_id"])
        preds[kind] = (t["sample_id"].tolist(), np.stack(t["probs"].to_numpy()))
    assert preds["default"][0] == preds["dask"][0]
    np.testing.assert_allclose(preds["dask"][1], preds["default"][1], atol=1e-5)
    assert len(started) == 1, "one cluster for the computed train stage"
    # the same run again: train comes from the stage cache, and no cluster is started for it
    res = curate_flow(source=str(src), out=str(tmp_path / "dask"), config_file=str(cfg), task_runner="dask",
                      workers=2, retries=0, retry_delay_s=0.0, until="train")
    assert res["stages"]["train"]["cached"]
    assert len(started) == 1, "a cached stage must not start the stage's Dask cluster"
