"""The score stage streams (issue 16): batch size changes nothing in its outputs; stale parts go; the
domain-shift guard's profile from the parts' sums equals the whole collection's."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ferclean.relabel import RelabelConfig, score_collection
from ferclean.runs import open_run
from ferclean.score_inputs import iter_score_batches


def _trained_store(tmp_path, n: int = 60):
    from test_train import make_store, tiny_cfg, toy_images

    from ferclean.train import run_train

    store, ids = make_store(tmp_path, n=n, no_face=2)
    y = toy_images(n)[1]
    rng = np.random.default_rng(0)
    inten = rng.normal(0.2, 0.2, (n, 2)).clip(0)
    inten[y == 1, 0] += 2.0
    inten[y == 2, 1] += 2.0
    # two faces per sample in aus: the score stage must take the primary face's row (face 0 here)
    aus = pa.table({"sample_id": ids * 2, "face_index": pa.array([0] * n + [1] * n, pa.int16()),
                    "AU01_r": np.r_[inten[:, 0], np.full(n, 9.0)], "AU02_r": np.r_[inten[:, 1], np.full(n, 9.0)],
                    "AU01_c": np.r_[(inten[:, 0] > 1), np.ones(n)].astype(np.float32),
                    "AU02_c": np.r_[(inten[:, 1] > 1), np.ones(n)].astype(np.float32)})
    d = store.table_dir("aus")
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(aus, d / "part-all.parquet")
    with open_run(store, "train", {}) as run:
        run_train(store, run, tiny_cfg(methods=["ce"], final_method="ce", epochs=2), progress=False)
    return store, ids


def _rows(store, run_id: str) -> list[dict]:
    t = store.read("relabels").to_pandas()
    t = t[t.run_id == run_id].drop(columns=["run_id", "decided_at"]).sort_values("sample_id")
    return t.to_dict("records")


def test_batch_size_changes_nothing_and_stale_parts_are_removed(tmp_path):
    from ferclean.model_dir import ModelDir

    store, _ = _trained_store(tmp_path)
    md = ModelDir.of_run(store.root)
    cfg = RelabelConfig(relabel_floor=0.0, trust="off")
    out, runs, preds = {}, {}, {}
    for name, bs in (("tiny", 7), ("whole", 10**9)):
        with open_run(store, "relabel-collection", {}) as run:
            out[name] = score_collection(store, run, md, cfg, batch_size=bs)
            runs[name] = run.run_id
        p = store.read("predictions").to_pandas()
        preds[name] = p[p.run_id == runs[name]].drop(columns=["run_id"]).sort_values(["method", "sample_id"])
    assert out["tiny"]["rows"] == 58 and out["tiny"]["actions"] == out["whole"]["actions"]
    assert out["tiny"]["au_view"] == out["whole"]["au_view"] == "weight 0.5, 58 samples"
    assert out["tiny"]["domain_shift"] == out["whole"]["domain_shift"]
    assert out["tiny"]["trust"] == out["whole"]["trust"]
    tiny, whole = _rows(store, runs["tiny"]), _rows(store, runs["whole"])
    assert len(tiny) == 58 and [r["sample_id"] for r in tiny] == [r["sample_id"] for r in whole]
    for a, b in zip(tiny, whole, strict=True):
        for k in a:
            if isinstance(a[k], float):
                assert a[k] == pytest.approx(b[k], abs=1e-6, nan_ok=True), k
            elif isinstance(a[k], np.ndarray):
                assert list(a[k]) == list(b[k]), k
            else:
                assert a[k] == b[k], k
    # the second (one-shard) run replaced the first run's 9 parts: no duplicate rows left
    assert out["tiny"]["shards"]["shards"] == 9 and out["whole"]["shards"]["shards"] == 1
    keys = sorted(k for k in store.part_keys("predictions") if k.startswith("score-"))
    assert len(keys) == 1 and keys[0].startswith("score-all-")
    assert [p.stem for p in (store.root / "stages" / "score.parts").glob("*.parquet")] == keys
    every = store.read("predictions").to_pandas()
    scored = every[every.run_id.isin(list(runs.values()))]
    assert (scored.run_id == runs["whole"]).all() and len(scored) == 116
    assert scored.groupby("method").sample_id.nunique().to_dict() == {"au_view": 58, "ce": 58}
    assert preds["tiny"].sample_id.tolist() == preds["whole"].sample_id.tolist()
    np.testing.assert_allclose(np.stack(preds["tiny"].probs), np.stack(preds["whole"].probs), atol=1e-6)


def test_batches_carry_the_primary_faces_aus_and_the_collection_filter(tmp_path):
    store, ids = _trained_store(tmp_path, n=40)
    batches = list(iter_score_batches(store, "toy", ["AU01", "AU02"], batch_size=16))
    assert [len(b.sample_ids) for b in batches] == [16, 16, 6]
    au = np.concatenate([b.au for b in batches])
    assert au.shape == (38, 2) and (au < 9.0).all()  # face 0's row, never face 1's
    assert sorted(s for b in batches for s in b.sample_ids) == ids[:38]
    flags = {s: f for b in batches for s, f in zip(b.sample_ids, b.quality, strict=True)}
    assert flags[ids[0]] == ["blurry"] and flags[ids[1]] == []
    assert not list(iter_score_batches(store, "another", None, batch_size=16))
    assert all(b.au is None for b in iter_score_batches(store, None, ["AU01", "AU99"], batch_size=16))


def test_profile_from_part_sums_equals_the_whole_collections():
    from ferclean.domain_shift import (
        add_sums,
        confidence_profile,
        embedding_sums,
        profile_from_sums,
        profile_sums,
    )

    rng = np.random.default_rng(1)
    n, c = 300, 5
    probs, labels = rng.dirichlet(np.ones(c), n), rng.integers(-1, c, n)
    au = rng.dirichlet(np.ones(c), n)
    au[::7] = np.nan
    emb = rng.normal(1, 2, (n, 6)).astype(np.float32)
    train = confidence_profile(probs, labels, au, rng.normal(0, 1, (400, 6)))
    for ref in (train, None):
        s = e = None
        for a in range(0, n, 70):
            sl = slice(a, a + 70)
            s = add_sums(s, profile_sums(probs[sl], labels[sl], au[sl]))
            e = add_sums(e, embedding_sums(emb[sl], ref))
        whole, parts = confidence_profile(probs, labels, au, emb, reference=ref), profile_from_sums(s, e, ref)
        assert set(whole) == set(parts)
        for k, v in whole.items():
            assert v == pytest.approx(parts[k], abs=2e-4), k


def test_score_shards_resume_and_follow_label_changes(tmp_path):
    from ferclean.model_dir import ModelDir
    from ferclean.score_shards import compact_dir

    store, ids = _trained_store(tmp_path, n=40)
    md = ModelDir.of_run(store.root)
    cfg = RelabelConfig(trust="off")

    def score(**kw):
        with open_run(store, "relabel-collection", {}) as run:
            return score_collection(store, run, md, cfg, batch_size=16, **kw)

    def score_keys():
        return {k for k in store.part_keys("predictions") if k.startswith("score-")}

    first = score()
    assert first["shards"] == {"shards": 3, "skipped": 0, "rows": 76}  # 40 samples, 38 with a face, 2 methods
    keys = score_keys()
    again = score()
    assert again["shards"]["skipped"] == 3 and again["actions"] == first["actions"] and score_keys() == keys
    next(iter(sorted(compact_dir(store).glob("*.parquet")))).unlink()  # a lost compact file: that shard again
    assert score()["shards"]["skipped"] == 2 and score_keys() == keys
    s = store.read("samples")
    labels = s["label_original"].to_pylist()
    labels[20] = next(c for c in md.meta()["classes"] if c != labels[20])
    store.write_part("samples", "all", s.set_column(s.schema.get_field_index("label_original"), "label_original",
                                                    pa.array(labels, pa.string())))
    # a changed label (as a changed image): the rest of its shard and the changed sample get new shards (an
    # incremental plan, ferclean.shards), both scored; the other two are kept; the old part is removed
    changed = score()
    assert changed["shards"] == {"shards": 4, "skipped": 2, "rows": 2 * 16}  # 15 + 1 samples, 2 methods
    assert len(score_keys()) == 4 and len(score_keys() & keys) == 2
    assert len(list(compact_dir(store).glob("*.parquet"))) == 4
    rows = store.read("relabels").to_pandas()
    last_run = rows.sort_values("decided_at", kind="stable").run_id.iloc[-1]  # part files are not read in run order
    latest = rows[rows.run_id == last_run].set_index("sample_id")
    assert latest.loc[ids[20], "label_original"] == labels[20]
