"""Tests of the flow plumbing that needs no Prefect server: stage registry and plan, per-stage
config loading, the stage cache (manifests), source fingerprints and artifact rendering."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest
from pydantic import BaseModel, ValidationError

from ferclean import artifacts, pipeline, stage_cache
from ferclean.pipeline import StageSpec
from ferclean.store import Store


class _Cfg(BaseModel, extra="forbid"):
    alpha: float = 1.0
    workers: int = 1


def run_demo_stage(store, run, config: _Cfg, progress: bool = True) -> dict:  # noqa: ANN001
    """A tiny stage function used to exercise the registry and the cache (never run by a flow)."""
    return {"alpha": config.alpha}


def run_no_config(store, run, progress: bool = True) -> dict:  # noqa: ANN001
    run.counts["no_config.calls"] += 1
    return {"rows": 1}


STAGES = (
    StageSpec("a", run_demo_stage, _Cfg),
    StageSpec("c", run_no_config, None),
    StageSpec("e", run_demo_stage, _Cfg),
)


def test_resolve_until_slices_the_registry():
    assert [s.name for s in pipeline.resolve_until(None, STAGES)] == ["a", "c", "e"]
    assert [s.name for s in pipeline.resolve_until("c", STAGES)] == ["a", "c"]
    with pytest.raises(ValueError, match="--until must be one of"):
        pipeline.resolve_until("zzz", STAGES)
    assert [s.name for s in pipeline.resolve_until(None)] == list(pipeline.STAGE_NAMES)


def test_registry_holds_plain_functions_and_config_classes():
    for spec in (*pipeline.CURATE_STAGES, *pipeline.RELABEL_COLLECTION_STAGES):
        assert callable(spec.run) and spec.run.__name__ == f"run_{spec.name}"
        assert spec.config_cls is not None and issubclass(spec.config_cls, BaseModel)
    assert [s.name for s in pipeline.CURATE_STAGES if s.shard_plan is not None] == ["faces", "aus"]


def test_build_configs_file_then_overrides(tmp_path):
    f = tmp_path / "cfg.yaml"
    f.write_text("a:\n  alpha: 2.5\ne: {}\n")
    raw = pipeline.read_config_file(f)
    plan = pipeline.resolve_until(None, STAGES)
    cfgs = pipeline.build_configs(plan, raw, {"a": {"workers": 4, "not_a_field": 1}, "e": {"workers": None}}, STAGES)
    assert cfgs["a"] == _Cfg(alpha=2.5, workers=4)
    assert cfgs["e"] == _Cfg() and cfgs["c"] is None
    j = tmp_path / "cfg.json"
    j.write_text(json.dumps({"a": {"alpha": 3}}))
    assert pipeline.read_config_file(j) == {"a": {"alpha": 3}}
    with pytest.raises(ValueError, match="unknown stages"):
        pipeline.build_configs(plan, {"zz": {}}, None, STAGES)
    with pytest.raises(ValidationError):
        pipeline.build_configs(plan, {"a": {"alfa": 1}}, None, STAGES)
    with pytest.raises(ValueError, match="takes no config"):
        pipeline.build_configs(plan, {"c": {"x": 1}}, None, STAGES)


def test_real_curate_configs_build_with_defaults():
    plan = pipeline.resolve_until(None)
    assert plan and plan[0].name == "ingest"
    cfgs = pipeline.build_configs(plan, {"relabel": {"au_view_weight": 0.25}}, {"ingest": {"source": "/x", "limit": 5}})
    assert cfgs["ingest"].source == "/x" and cfgs["ingest"].limit == 5
    assert cfgs["relabel"].au_view_weight == 0.25 and cfgs["train"].relabel is cfgs["relabel"]


def test_stage_cache_runs_then_skips_until_something_changes(tmp_path):
    from ferclean.runs import open_run

    store = Store(tmp_path)
    cache = stage_cache.StageCache(store)
    spec = StageSpec("c", run_no_config, None, inputs=("rejects",))
    calls = []
    with open_run(store, "t", {}) as run:
        first = cache.run(run, spec, None, before=lambda: calls.append(1) or {"shards": 0})
        second = cache.run(run, spec, None, before=lambda: calls.append(2))
        _write(store, "rejects", "k1", ["x"])
        third = cache.run(run, spec, None)
        forced = cache.run(run, spec, None, force=True)
    assert (first["cached"], second["cached"], third["cached"], forced["cached"]) == (False, True, False, False)
    assert first["shards"] == {"shards": 0} and calls == [1]  # `before` only runs when the stage is computed
    assert second["summary"] == {"rows": 1} and second["computed_by"] == first["computed_by"]
    assert stage_cache.read_manifest(store, "c").summary == {"rows": 1}


def _write(store: Store, table: str, key: str, ids: list[str]) -> None:
    from datetime import UTC, datetime

    rows = [{"run_id": "r", "source_ref": i, "stage": "ingest", "reason_code": "file_missing", "message": "m",
             "created_at": datetime.now(UTC)} for i in ids]
    store.write_part(table, key, pa.Table.from_pylist(rows))


def test_manifest_skips_only_when_inputs_config_code_and_outputs_match(tmp_path):
    store = Store(tmp_path)
    spec = StageSpec("a", run_demo_stage, _Cfg, inputs=("rejects",), outputs=("runs_like/",))
    _write(store, "rejects", "k1", ["x"])
    exp = stage_cache.expected_manifest(store, spec, _Cfg())
    assert stage_cache.is_up_to_date(store, spec, exp) is None  # nothing recorded yet
    (tmp_path / "runs_like").mkdir()
    (tmp_path / "runs_like" / "f.txt").write_text("out")
    exp.output_fingerprint = stage_cache.path_fingerprint(store, spec.outputs)
    exp.summary = {"n": 1}
    stage_cache.write_manifest(store, exp)
    again = stage_cache.expected_manifest(store, spec, _Cfg())
    assert stage_cache.is_up_to_date(store, spec, again).summary == {"n": 1}
    # config change
    assert stage_cache.is_up_to_date(store, spec, stage_cache.expected_manifest(store, spec, _Cfg(alpha=2))) is None
    # output tampered with
    (tmp_path / "runs_like" / "f.txt").write_text("changed!")
    assert stage_cache.is_up_to_date(store, spec, again) is None
    exp.output_fingerprint = stage_cache.path_fingerprint(store, spec.outputs)
    stage_cache.write_manifest(store, exp)
    assert stage_cache.is_up_to_date(store, spec, again) is not None
    # input change: a new part
    _write(store, "rejects", "k2", ["y"])
    assert stage_cache.is_up_to_date(store, spec, stage_cache.expected_manifest(store, spec, _Cfg())) is None
    # an unreadable manifest means recompute
    stage_cache.manifest_path(store, "a").write_text("{not json")
    assert stage_cache.read_manifest(store, "a") is None


def test_source_fingerprint_sees_changed_image(tmp_path):
    (tmp_path / "img").mkdir()
    img = tmp_path / "img" / "a.png"
    img.write_bytes(b"1234")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("image_path,label\nimg/a.png,happy\n")
    fp = stage_cache.source_fingerprint(manifest)
    assert fp == stage_cache.source_fingerprint(manifest)
    img.write_bytes(b"12345")
    assert stage_cache.source_fingerprint(manifest) != fp
    fp2 = stage_cache.source_fingerprint(manifest)
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert stage_cache.source_fingerprint(manifest) != fp2


def test_code_version_changes_with_source(tmp_path, monkeypatch):
    import importlib

    mod = tmp_path / "stage_mod_cv.py"
    mod.write_text("def run_x(store, run, progress=True):\n    return {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = StageSpec("x", importlib.import_module("stage_mod_cv").run_x, None)
    v1 = stage_cache.code_version(spec)
    mod.write_text("def run_x(store, run, progress=True):\n    return {'v': 2}\n")
    assert stage_cache.code_version(spec) != v1


def test_code_version_covers_the_modules_a_stage_imports():
    from ferclean.code_graph import ferclean_graph, reachable

    # the verdict rule lives in ferclean.noise: editing it must recompute relabel (and train)
    assert "ferclean.noise" in reachable("ferclean.relabel", ferclean_graph())
    assert "ferclean.noise" in reachable("ferclean.train.stage", ferclean_graph())


def test_markdown_rendering():
    assert artifacts.md_table([]) == ""
    t = artifacts.md_table([{"a": 1, "b": 0.123456}, {"a": "x|y"}])
    assert t.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.1235 |", "| x\\|y |  |"]
    counts = {"rejects.faces.no_face": 3, "rejects.ingest.file_missing": 1, "faces.rows": 9}
    assert artifacts.rejects_by_reason(counts, "faces") == {"no_face": 3}
    md = artifacts.render_report(
        "train", {"epochs": 2, "history": [{"epoch": 1, "loss": 1.5}, {"epoch": 2, "loss": 0.9}]},
        rejects={"no_face": 3, "decode_failed": 1}, sections={"Verdicts": [{"action": "keep", "n": 5}]},
    )
    assert "## history" in md and "| 2 | 0.9 |" in md
    assert "| no_face | 3 | 0.75 |" in md and "| keep | 5 |" in md
    assert artifacts.artifact_key("au_graph", "ferclean-curate") == "ferclean-curate-au-graph"


def test_curve_summary_groups_by_method_and_fold():
    rows = [{"method": "ce", "fold": 0, "epoch": 1, "loss": 0.5, "acc": 0.7, "seconds": 2.0},
            {"method": "ce", "fold": 0, "epoch": 0, "loss": 1.0, "acc": 0.4, "seconds": 3.0},
            {"method": "ce", "fold": 1, "epoch": 0, "loss": 0.9, "acc": 0.5},
            {"note": "not an epoch row"}]
    assert artifacts.curve_summary(rows) == [
        {"method": "ce", "fold": 0, "epochs": 2, "first_loss": 1.0, "last_loss": 0.5, "last_acc": 0.7, "seconds": 5.0},
        {"method": "ce", "fold": 1, "epochs": 1, "first_loss": 0.9, "last_loss": 0.9, "last_acc": 0.5, "seconds": 0.0},
    ]


def test_value_shares_and_verdicts(tmp_path):
    shares = artifacts.value_shares(pa.array(["dlib", "full_frame", "dlib", "dlib"]))
    assert shares[0] == {"value": "dlib", "n": 3, "share": 0.75}
    assert artifacts.verdict_counts(Store(tmp_path), None) == []
    assert artifacts.detector_shares(Store(tmp_path)) == []
    assert artifacts.au_prevalence(Store(tmp_path)) == []


def test_publish_is_noop_outside_flows():
    assert artifacts.publish("faces", "# x") is False


def test_deployments_have_cron_schedules_and_parameters():
    from flows.deploy import build_deployments

    deps = build_deployments("/data/in.csv", "/data/out", cron="30 1 * * *", limit=100, workers=4,
                             relabel_source="/data/web", relabel_out="/data/web_out")
    cur, rel = deps
    assert (cur.flow_name, cur.name, cur.entrypoint) == ("ferclean-curate", "nightly-curate", "flows.curate.curate_flow")
    assert cur.schedules[0].schedule.cron == "30 1 * * *"
    assert cur.parameters == {"source": "/data/in.csv", "out": "/data/out", "limit": 100, "workers": 4,
                              "task_runner": "default"}
    assert rel.parameters["model_dir"] == "/data/out/model" and rel.schedules[0].schedule.cron == "0 4 * * *"
    with pytest.raises(ValueError, match="nothing to serve"):
        build_deployments(None, None)
    with pytest.raises(ValueError, match="relabel_out"):
        build_deployments(None, None, relabel_source="/data/web")


def test_model_au_reference_lookup(tmp_path):
    from flows.relabel_collection import model_au_reference

    train_out = tmp_path / "train"
    model = train_out / "model"
    model.mkdir(parents=True)
    (model / "model.json").write_text(json.dumps({"neutral_au_reference": None}))
    assert model_au_reference(model) is None
    ref = train_out / "runs" / "r1" / "aus_reference.json"
    ref.parent.mkdir(parents=True)
    ref.write_text("{}")
    m = stage_cache.StageManifest("aus", "i", "c", "v", summary={"reference_path": str(ref)})
    stage_cache.write_manifest(Store(train_out), m)
    assert model_au_reference(model) == str(ref)  # found through the training run's aus manifest
    (model / "aus_reference.json").write_text("{}")
    assert model_au_reference(model) == str(model / "aus_reference.json")
    own = tmp_path / "ref.json"
    own.write_text("{}")
    (model / "model.json").write_text(json.dumps({"neutral_au_reference": str(own)}))
    assert model_au_reference(model) == str(own)


def test_relabel_collection_scores_with_the_relabel_section():
    plan = [pipeline.get_spec("score", pipeline.RELABEL_COLLECTION_STAGES)]
    cfgs = pipeline.build_configs(plan, {"relabel": {"rule": "threshold"}}, {"score": {"model_dir": "/m"}},
                                  all_stages=pipeline.RELABEL_COLLECTION_STAGES)
    assert cfgs["score"].model_dir == "/m" and cfgs["score"].relabel.rule == "threshold"
    with pytest.raises(ValueError, match="relabel: section"):
        pipeline.build_configs(plan, {"score": {"model_dir": "/m", "relabel": {}}}, None,
                               all_stages=pipeline.RELABEL_COLLECTION_STAGES)
