"""Small synthetic stores for tests, demos and benchmarks of the analyst-facing outputs.

:func:`make_demo_store` writes a complete little run folder: images on disk, `samples` (with
FER+ vote columns), a model run with `predictions` and `relabels`, and, when their contracts
exist, `faces` (with PNG crops) and `aus`, plus a JSON training curve under `OUT/runs/<id>/`.
:func:`synthetic_relabels` makes a large relabels Arrow table for benchmarks.

Everything is seeded and deterministic; nothing here reads shared data.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from ferclean.classes import FER7, FERPLUS_VOTE_COLUMNS
from ferclean.contracts import contract_tables, load_contract
from ferclean.runs import open_run
from ferclean.store import Store

ACTIONS = ("keep", "relabel", "review", "drop")


def synthetic_face(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A cartoon face, uint8 (size, size) grayscale: ellipse head, two eyes, a mouth."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), 40.0, np.float32)
    head = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.52) / 0.46) ** 2 < 1
    img[head] = 170 + rng.uniform(-30, 30)
    for ex in (0.35, 0.65):
        img[((xx - ex) ** 2 + (yy - 0.42) ** 2) < 0.004] = 30
    curve = rng.uniform(-0.12, 0.12)
    mouth = np.abs(yy - (0.7 + curve * ((xx - 0.5) / 0.2) ** 2 - curve)) < 0.025
    img[mouth & (np.abs(xx - 0.5) < 0.2)] = 50
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    """Encode a uint8 (H, W) or (H, W, 3) array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _default(dtype: pa.DataType) -> Any:
    if pa.types.is_fixed_size_list(dtype):
        return [_default(dtype.value_type)] * dtype.list_size
    if pa.types.is_list(dtype):
        return []
    if pa.types.is_boolean(dtype):
        return False
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        return 0
    if pa.types.is_timestamp(dtype):
        return datetime.now(UTC)
    if pa.types.is_binary(dtype):
        return b""
    return ""


def fill_contract_rows(table: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> Arrow table for `table`, filling undeclared-by-caller columns with neutral values.

    Lets tests write tables owned by other stages (faces, aus) without hard-coding their full
    schemas: nullable columns become null, required ones get 0 / '' / [] / False.
    """
    contract = load_contract(table)
    out = []
    for row in rows:
        full = {}
        for col in contract.columns:
            if col.name in row:
                full[col.name] = row[col.name]
            elif col.nullable:
                full[col.name] = None
            elif col.allowed:
                full[col.name] = col.allowed[0]
            else:
                v = _default(col.arrow)
                full[col.name] = col.min if col.min is not None and isinstance(v, int) and col.min > v else v
        full.update({k: v for k, v in row.items() if k not in full})
        out.append(full)
    schema = contract.schema()
    extra = [k for k in (out[0] if out else {}) if k not in schema.names]
    arrays = {c.name: pa.array([r[c.name] for r in out], c.arrow) for c in contract.columns}
    for k in extra:
        arrays[k] = pa.array([r[k] for r in out])
    return pa.table(arrays)


def make_demo_store(
    out: str | Path,
    n_samples: int = 40,
    seed: int = 0,
    classes: tuple[str, ...] = FER7,
    with_faces: bool = True,
    with_curves: bool = True,
) -> Store:
    """Write a small, complete synthetic run folder at `out` and return its Store.

    Samples `s000..`, 48x48 PNGs under `out/_images/`, split 75 % train / 25 % test, FER+ vote
    columns; one `curate` run with predictions (fold 0) and a relabel verdict per sample drawn
    from keep/relabel/review/drop; faces/aus only when those contracts exist.
    """
    rng = np.random.default_rng(seed)
    store = Store(out)
    img_dir = store.root / "_images"
    img_dir.mkdir(parents=True, exist_ok=True)
    k = len(classes)
    samples, crops = [], {}
    for i in range(n_samples):
        sid = f"s{i:03d}"
        img = synthetic_face(rng)
        path = img_dir / f"{sid}.png"
        path.write_bytes(png_bytes(img))
        crops[sid] = png_bytes(synthetic_face(rng, 64))
        label = classes[i % k]
        votes = rng.multinomial(10, np.full(len(FERPLUS_VOTE_COLUMNS), 1 / len(FERPLUS_VOTE_COLUMNS)))
        row = {
            "sample_id": sid, "source_path": str(path), "content_sha256": f"{i:064x}",
            "split": "train" if i % 4 else "test", "label_original": label, "label_raw": label,
            "collection": "demo", "width": 48, "height": 48, "channels": 1, "source_row": i,
            "run_id": "ingest-demo",
        }
        row.update({col: int(v) for col, v in zip(FERPLUS_VOTE_COLUMNS, votes, strict=True)})
        samples.append(row)
    store.write_part("samples", "0", pa.Table.from_pylist(samples))

    with open_run(store, "curate", {"classes": list(classes), "seed": seed}) as run:
        preds, verdicts = [], []
        now = datetime.now(UTC)
        for i, s in enumerate(samples):
            probs = rng.dirichlet(np.ones(k))
            alpha = float(rng.uniform(0, 1))
            orig = s["label_original"]
            sugg = classes[int(np.argmax(probs))]
            action = ACTIONS[i % 4] if i >= 4 else ACTIONS[i]
            if action == "relabel" and sugg == orig:
                sugg = classes[(classes.index(orig) + 1) % k]
            final = {"keep": orig, "relabel": sugg, "review": orig, "drop": None}[action]
            p_o, p_s = float(probs[classes.index(orig)]), float(probs[classes.index(sugg)])
            preds.append({
                "run_id": run.run_id, "sample_id": s["sample_id"], "method": "ulcag", "fold": 0,
                "alpha": alpha, "probs": probs.astype(np.float32).tolist(), "sem_dist": None,
                "pred_label": classes[int(np.argmax(probs))],
            })
            verdicts.append({
                "run_id": run.run_id, "sample_id": s["sample_id"], "label_original": orig,
                "label_suggested": sugg, "label_final": final, "action": action, "alpha": alpha,
                "p_original": p_o, "p_suggested": p_s, "margin": p_s - p_o,
                "sem_dist_original": None, "sem_dist_suggested": None,
                "priority": float(1 - alpha) if action != "keep" else None, "method": "ulcag",
                "reasons": [] if action == "keep" else ["low_alpha", "model_disagrees"],
                "source": "model", "reviewer": None, "decided_at": now,
            })
        store.write_part("predictions", "0", pa.Table.from_pylist(preds))
        store.append("relabels", pa.Table.from_pylist(verdicts), run.run_id)
        run.counts["relabels"] = len(verdicts)
        if with_curves:
            epochs = list(range(1, 11))
            curve = {
                "epoch": epochs,
                "train_loss": [float(2.0 / e + rng.uniform(0, 0.05)) for e in epochs],
                "val_loss": [float(2.2 / e + 0.1 + rng.uniform(0, 0.05)) for e in epochs],
                "val_acc": [float(0.3 + 0.05 * e) for e in epochs],
            }
            (run.dir / "curves.json").write_text(json.dumps(curve))
        run.reject("_images/broken.png", "ingest", "not_an_image", "synthetic reject")

    tables = set(contract_tables())
    if with_faces and "faces" in tables:
        face_rows = []
        for i, s in enumerate(samples):
            face_rows.append({
                "run_id": "faces-demo", "sample_id": s["sample_id"], "face_index": 0,
                "is_primary": True, "detector": "full_frame", "score": 1.0,
                "crop_png": crops[s["sample_id"]],
                "quality_flags": ["blurry"] if i % 5 == 0 else [],
            })
        store.write_part("faces", "0", fill_contract_rows("faces", face_rows))
        if "aus" in tables:
            au_cols = [c.name for c in load_contract("aus").columns if c.name.endswith("_c")]
            au_rows = []
            for s in samples:
                row: dict[str, Any] = {"run_id": "aus-demo", "sample_id": s["sample_id"], "face_index": 0}
                happy = s["label_original"] == "happy"
                for c in au_cols:
                    p = 0.9 if happy and c in ("AU06_c", "AU12_c") else 0.2
                    row[c] = float(rng.uniform() < p)
                au_rows.append(row)
            store.write_part("aus", "0", fill_contract_rows("aus", au_rows))
            if "au_graph" in tables:
                store.write_part("au_graph", "0", pa.Table.from_pylist(au_graph_rows(au_rows, au_cols)))
    from ferclean.catalog import refresh_catalog

    refresh_catalog(store)
    return store


def au_graph_rows(au_rows: list[dict[str, Any]], au_cols: list[str]) -> list[dict[str, Any]]:
    """Co-occurrence rows (au_p, au_q, n_pq, n_q, p_given_q = n_pq / n_q) from AUxx_c rows."""
    x = np.array([[r[c] for c in au_cols] for r in au_rows], dtype=float) >= 0.5
    names = [c[: -len("_c")] for c in au_cols]
    both = x.T.astype(int) @ x.astype(int)  # (n_au, n_au): faces with p and q present
    out = []
    for p, name_p in enumerate(names):
        for q, name_q in enumerate(names):
            n_q = int(both[q, q])
            out.append({"run_id": "au-graph-demo", "au_p": name_p, "au_q": name_q, "n_pq": int(both[p, q]),
                        "n_q": n_q, "p_given_q": both[p, q] / n_q if n_q else 0.0})
    return out


def synthetic_relabels(n_samples: int, n_runs: int = 4, human_frac: float = 0.02, seed: int = 0) -> pa.Table:
    """A relabels table for benchmarks: every one of `n_samples` samples gets a model verdict in
    each of `n_runs` runs (one day apart), and `human_frac` of them a later human decision.

    Rows = n_samples * n_runs + round(human_frac * n_samples); (run_id, sample_id) is unique.
    """
    rng = np.random.default_rng(seed)
    classes = np.array(FER7)
    n_h = int(round(human_frac * n_samples))
    sid = np.concatenate([np.tile(np.arange(n_samples), n_runs), rng.choice(n_samples, n_h, replace=False)])
    run = np.concatenate([np.repeat(np.arange(n_runs), n_samples), np.full(n_h, n_runs)])
    n_rows = len(sid)
    human = run == n_runs
    orig = classes[sid % len(classes)]
    sugg = classes[rng.integers(0, len(classes), n_rows)]
    action = np.array(ACTIONS)[rng.choice(4, n_rows, p=[0.7, 0.1, 0.15, 0.05])]
    final = np.where(action == "relabel", sugg, orig).astype(object)
    final[action == "drop"] = None
    alpha = rng.uniform(size=n_rows).astype(np.float32)
    p_o = rng.uniform(size=n_rows).astype(np.float32)
    p_s = rng.uniform(size=n_rows).astype(np.float32)
    run_ids = np.array([f"202601{r + 1:02d}T000000Z-bench{r}" for r in range(n_runs)] + ["20261231T000000Z-review"])
    t0 = np.datetime64("2026-01-01T00:00:00", "us")
    decided = t0 + run.astype("timedelta64[D]").astype("timedelta64[us]")
    flagged = action != "keep"
    offsets = np.concatenate([[0], np.cumsum(flagged)]).astype(np.int32)
    reasons = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.full(int(flagged.sum()), "low_alpha")))
    return pa.table({
        "run_id": run_ids[run],
        "sample_id": pa.array(np.char.add("img/", np.char.zfill(sid.astype(str), 7))),
        "label_original": orig, "label_suggested": sugg, "label_final": pa.array(final, pa.string()),
        "action": action, "alpha": alpha, "p_original": p_o, "p_suggested": p_s,
        "margin": p_s - p_o,
        "sem_dist_original": pa.nulls(n_rows, pa.float32()), "sem_dist_suggested": pa.nulls(n_rows, pa.float32()),
        "priority": (1 - alpha), "method": np.full(n_rows, "ulcag"), "reasons": reasons,
        "source": np.where(human, "human", "model"),
        "reviewer": pa.array(np.where(human, "bench", None), pa.string()),
        "decided_at": pa.array(decided).cast(pa.timestamp("us", tz="UTC")),
    })
