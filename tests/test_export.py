"""Cleaned export: final labels, drops excluded, ImageFolder tree, manifest, soft labels."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ferclean.catalog import query
from ferclean.cli import app
from ferclean.export import ExportConfig, find_classes, run_export, vote_soft_labels
from ferclean.report.synthetic import make_demo_store
from ferclean.runs import open_run
from ferclean.store import Store


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Store:
    # 16 samples: latest actions cycle keep/relabel/review/drop -> 4 drops (s003, s007, s011, s015)
    return make_demo_store(tmp_path_factory.mktemp("export") / "out", n_samples=16, with_curves=False)


def _export(store: Store, **kw) -> dict:
    cfg = ExportConfig(**kw)
    with open_run(store, "export", cfg.model_dump(mode="json")) as run:
        return run_export(store, run, cfg, progress=False)


def _manifest(dest: Path) -> list[dict[str, str]]:
    with (dest / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_folder_export_loads_with_torchvision_imagefolder(demo, tmp_path):
    from torchvision.datasets import ImageFolder

    dest = tmp_path / "clean"
    summary = _export(demo, to=str(dest), layout="folder")
    assert summary["written"] == 12 and summary["excluded"] == {"dropped": 4}
    final = dict(query(demo, "SELECT sample_id, label_final FROM latest_verdicts WHERE action <> 'drop'")[1])
    split = dict(query(demo, "SELECT sample_id, split FROM samples")[1])
    rows = _manifest(dest)
    assert {r["sample_id"]: r["label"] for r in rows} == final
    total = 0
    for sp in ("train", "test"):
        ds = ImageFolder(str(dest / sp))
        total += len(ds)
        img, y = ds[0]
        assert img.size == (48, 48)
        for path, idx in ds.samples:  # every file sits under its final label
            rel = Path(path).relative_to(dest).as_posix()
            r = next(r for r in rows if r["path"] == rel)
            assert ds.classes[idx] == final[r["sample_id"]] and split[r["sample_id"]] == sp
    assert total == 12
    # soft labels from the FER+ votes and model probabilities sum to 1
    r = rows[0]
    soft = [float(r[k]) for k in r if k.startswith("soft_")]
    probs = [float(r[k]) for k in r if k.startswith("prob_")]
    assert len(probs) == 7 and abs(sum(soft) - 1) < 1e-3 and abs(sum(probs) - 1) < 1e-3


def test_manifest_with_crops_and_human_decisions(demo, tmp_path):
    from ferclean.contracts import contract_tables

    if "faces" not in contract_tables():
        pytest.skip("faces contract not present")
    dest = tmp_path / "m"
    summary = _export(demo, to=str(dest), layout="manifest", crops=True)
    rows = _manifest(dest)
    assert summary["written"] == len(rows) == 12
    for r in rows:
        assert Path(r["path"]).is_file() and Path(r["path"]).parent == dest / "crops"
    assert not (dest / "train").exists()


def test_human_drop_is_excluded_and_reexport_replaces_folder(tmp_path):
    store = make_demo_store(tmp_path / "o", n_samples=8, with_faces=False, with_curves=False)
    dest = tmp_path / "clean"
    first = _export(store, to=str(dest))
    assert first["written"] == 6
    from ferclean.review import import_decisions

    (tmp_path / "d.csv").write_text("sample_id,decision,decision_label\ns000,drop,\ns001,relabel,angry\n")
    import_decisions(store, tmp_path / "d.csv", "ann")
    second = _export(store, to=str(dest))
    rows = {r["sample_id"]: r for r in _manifest(dest)}
    assert second["written"] == 5 and "s000" not in rows
    assert rows["s001"]["label"] == "angry" and rows["s001"]["decided_by"] == "human"
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png"))
    assert len(files) == 5  # the earlier export's files are gone
    assert any(f.endswith(".png") and f.split("/")[1] == "angry" for f in files)


def test_missing_source_file_becomes_a_reject(tmp_path):
    store = make_demo_store(tmp_path / "o", n_samples=4, with_faces=False, with_curves=False)
    (store.root / "_images" / "s000.png").unlink()
    summary = _export(store, to=str(tmp_path / "c"))
    assert summary["written"] == 2  # s000 missing, s003 dropped
    rej = query(store, "SELECT source_ref, reason_code FROM rejects WHERE stage = 'export'")[1]
    assert rej == [("s000", "file_missing")]


def test_refuses_a_foreign_non_empty_folder(demo, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError):
        _export(demo, to=str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "thesis.tex").exists()
    res = CliRunner().invoke(app, ["export", str(demo.root), "--to", str(tmp_path / "mine")])
    assert res.exit_code == 2 and "not an earlier ferclean export" in " ".join(res.output.split())


def test_cli_export(demo, tmp_path):
    res = CliRunner().invoke(app, ["export", str(demo.root), "--to", str(tmp_path / "e"), "--layout", "manifest",
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = _manifest(tmp_path / "e")
    assert len(rows) == 12 and all(Path(r["path"]).is_file() for r in rows)


def test_pure_helpers():
    assert vote_soft_labels({"happiness": 3, "neutral": 1, "unknown": 6, "NF": 0}) == {"happy": 0.75, "neutral": 0.25}
    assert vote_soft_labels({"happiness": 0, "unknown": 2}) is None
    assert find_classes({"seed": 1, "train": {"classes": ["sad", "happy"]}}) == ["sad", "happy"]
    assert find_classes({"stages": [{"x": 1}, {"classes": ["a", "b"]}]}) == ["a", "b"]
    assert find_classes({"classes": "sad,happy"}) is None


@pytest.mark.shared
def test_real_fer2013_slice_exports_with_ferplus_soft_labels(tmp_path, fer_dir):
    """Ingest 120 real FER2013 rows, export without verdicts: original labels, FER+ vote shares."""
    from torchvision.datasets import ImageFolder

    from ferclean.ingest import IngestConfig, run_ingest

    store = Store(tmp_path / "out")
    cfg = IngestConfig(source=str(fer_dir / "labels.csv"), limit=120)
    with open_run(store, "ingest", cfg.model_dump(mode="json")) as run:
        run_ingest(store, run, cfg, progress=False)
    summary = _export(store, to=str(tmp_path / "fer"), layout="folder")
    assert summary["written"] == store.count("samples") > 0 and summary["soft_label_columns"]
    rows = {r["sample_id"]: r for r in _manifest(tmp_path / "fer")}
    from ferclean.classes import FERPLUS_VOTE_COLUMNS

    cols = list(FERPLUS_VOTE_COLUMNS)
    sel = ", ".join(f'"{c}"' for c in cols)
    checked = 0
    for sid, label, *v in query(store, f"SELECT sample_id, label_original, {sel} FROM samples")[1]:
        r = rows[sid]
        assert r["label"] == label and r["action"] == "unreviewed"
        total = sum(x or 0 for x in v)
        if total:
            for col, n in zip(cols, v, strict=True):
                assert abs(float(r[f"soft_{FERPLUS_VOTE_COLUMNS[col]}"]) - (n or 0) / total) < 1e-3
            checked += 1
    assert checked > 100
    ds = ImageFolder(str(tmp_path / "fer" / "train"))
    assert len(ds) == sum(1 for r in rows.values() if r["split"] == "train")
    assert ds[0][0].size == (48, 48)
