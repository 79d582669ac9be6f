"""AU co-occurrence graph (ULC-AG section II-C, eq. 5) and its row normalisation (eq. 6).

``A[p, q] = P(AU_p | AU_q) = n_pq / n_q`` where ``n_pq`` counts training faces with both AUs
present and ``n_q`` faces with AU_q present. A is asymmetric; its diagonal is 1. An AU never
present in the training split (n_q = 0 after smoothing is not applied) has its row and column set
to 0 off the diagonal (diagonal 1), and is reported, never NaN.

Stage: :func:`run_au_graph` reads `aus` presence of primary faces of `split == 'train'` samples,
writes table `au_graph` (one row per ordered AU pair) and `run.dir / "au_graph.png"`.
:func:`load_au_graph` gives (au_names, A) to the training stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from ferclean.aus.names import AU_NAMES
from ferclean.primary import primary_aus
from ferclean.store import Store


@dataclass
class Cooccurrence:
    """Counts and conditional probabilities for M AUs.

    n_pq (M, M) int64: faces with both AU_p and AU_q present (diagonal = n_q).
    n_q (M,) int64: faces with AU_q present. A (M, M) float64: P(AU_p | AU_q), column q
    conditioned on AU_q. never_present: indices of AUs with n_q == 0.
    """

    n_pq: np.ndarray
    n_q: np.ndarray
    A: np.ndarray
    never_present: list[int] = field(default_factory=list)


def cooccurrence(presence: np.ndarray, smoothing: float = 0.0) -> Cooccurrence:
    """Co-occurrence counts and A[p, q] = (n_pq + s) / (n_q + 2 s) from (N, M) 0/1 presence.

    `smoothing` s >= 0 is additive (Laplace-style, the 2 s makes A a smoothed Bernoulli
    estimate in [0, 1]); s = 0 is ULC-AG eq. 5 exactly. NaN entries count as absent. An AU with
    n_q == 0 gets A[:, q] = A[q, :] = 0 off the diagonal whatever the smoothing, and is listed
    in `never_present`. The diagonal is always 1.
    """
    if smoothing < 0:
        raise ValueError("smoothing must be >= 0")
    x = np.asarray(presence, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"presence must be (N, M), got {x.shape}")
    x = np.nan_to_num(x, nan=0.0)
    if not np.isin(x, (0.0, 1.0)).all():
        raise ValueError("presence must hold only 0/1 (or bool)")
    n_pq = (x.T @ x).round().astype(np.int64)
    n_q = np.diag(n_pq).copy()
    never = np.flatnonzero(n_q == 0)
    denom = n_q.astype(np.float64) + 2 * smoothing
    with np.errstate(divide="ignore", invalid="ignore"):
        A = (n_pq + smoothing) / denom[None, :]
    A[:, never] = 0.0
    A[never, :] = 0.0
    np.fill_diagonal(A, 1.0)
    return Cooccurrence(n_pq=n_pq, n_q=n_q, A=A, never_present=never.tolist())


def row_normalise(A: np.ndarray) -> np.ndarray:
    """Ā with each row summing to 1 (ULC-AG eq. 6); an all-zero row stays zero. (M, M) -> (M, M)."""
    A = np.asarray(A, dtype=np.float64)
    s = A.sum(1, keepdims=True)
    return np.divide(A, s, out=np.zeros_like(A), where=s > 0)


def cooccurrence_graph(presence: np.ndarray) -> np.ndarray:
    """Row-normalised eq. 5 graph straight from (N, M) 0/1 presence (NaN = absent) -> (M, M) float32.

    What training uses when no `au_graph` table fits its AUs: rows sum to one, an AU that never
    occurs keeps only its self-loop.
    """
    return row_normalise(cooccurrence(presence).A).astype(np.float32)


class AuGraphConfig(BaseModel):
    """Settings of the au_graph stage."""

    smoothing: float = Field(0.0, ge=0, description="additive smoothing s of cooccurrence (0 = ULC-AG eq. 5)")
    split: str = Field("train", description="samples.split whose primary faces are counted")
    backend: str | None = Field(None, description="use only `aus` rows from this backend (None: all)")
    plot: bool = Field(True, description="write run.dir/au_graph.png")


def presence_matrix(aus_table: pa.Table, au_names: tuple[str, ...] = AU_NAMES) -> np.ndarray:
    """(N, M) float presence (NaN where null) from an `aus` table's AUxx_c columns."""
    cols = []
    for a in au_names:
        c = aus_table.column(f"{a}_c").cast(pa.float64())
        cols.append(c.to_numpy(zero_copy_only=False))
    return np.stack(cols, 1) if cols else np.zeros((aus_table.num_rows, 0))


def graph_table(run_id: str, au_names: tuple[str, ...], co: Cooccurrence) -> pa.Table:
    """Long-form `au_graph` rows: one per ordered pair (p, q)."""
    m = len(au_names)
    p_idx, q_idx = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    p_idx, q_idx = p_idx.ravel(), q_idx.ravel()
    names = np.array(au_names)
    return pa.table({
        "run_id": pa.array([run_id] * (m * m), pa.string()),
        "au_p": pa.array(names[p_idx].tolist(), pa.string()),
        "au_q": pa.array(names[q_idx].tolist(), pa.string()),
        "n_pq": pa.array(co.n_pq[p_idx, q_idx], pa.int64()),
        "n_q": pa.array(co.n_q[q_idx], pa.int64()),
        "p_given_q": pa.array(co.A[p_idx, q_idx], pa.float32()),
    })


def plot_graph(au_names: tuple[str, ...], co: Cooccurrence, path, title: str = "") -> None:  # noqa: ANN001
    """Heatmap of A[p, q] = P(row AU | column AU) with counts in the column labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = len(au_names)
    fig, ax = plt.subplots(figsize=(0.55 * m + 2.5, 0.55 * m + 2))
    im = ax.imshow(co.A, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(m), [f"{a}\n{n}" for a, n in zip(au_names, co.n_q, strict=True)], fontsize=7)
    ax.set_yticks(range(m), au_names, fontsize=7)
    ax.set_xlabel("conditioning AU q (n_q below)")
    ax.set_ylabel("AU p")
    for i in range(m):
        for j in range(m):
            v = co.A[i, j]
            ax.text(j, i, f"{v:.2f}"[1:] if v < 1 else "1", ha="center", va="center", fontsize=5,
                    color="white" if v < 0.5 else "black")
    ax.set_title(title or "P(AU_p | AU_q)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_au_graph(store: Store, run: Any, config: AuGraphConfig, progress: bool = True) -> dict:
    """Build the AU co-occurrence graph from `aus` presence of training primary faces.

    Joins `aus` to `faces` (is_primary) when `faces` exists and to `samples` (split). Writes
    table `au_graph` and, when `config.plot`, `run.dir / "au_graph.png"`. Returns a summary with
    the number of faces counted, the AUs never present and the strongest off-diagonal links.
    """
    aus = primary_aus(store)  # the primary face's row (ferclean.primary), face 0 only without a faces table
    if aus.num_rows == 0:
        raise ValueError("table `aus` is empty: run the aus stage first")
    split = store.read("samples", columns=["sample_id", "split"])
    split = split.filter(pc.equal(split["split"], config.split)).select(["sample_id"])
    rows = aus.join(split, keys="sample_id", join_type="inner")
    if config.backend is not None:
        rows = rows.filter(pc.equal(rows["backend"], config.backend))
    rows = rows.sort_by("sample_id")
    # Every presence column of `aus` is a node, AU28 included (null for the geometric backend,
    # so it is reported as never present), so readers can select any AUxx_c they train on.
    au_names = tuple(a for a in (*AU_NAMES, "AU28") if f"{a}_c" in rows.column_names)
    x = presence_matrix(rows, au_names)
    co = cooccurrence(x, smoothing=config.smoothing)
    store.write_part("au_graph", "graph", graph_table(run.run_id, au_names, co))
    store.keep_only("au_graph", ["graph"])
    if config.plot:
        plot_graph(au_names, co, run.dir / "au_graph.png",
                   title=f"P(AU_p | AU_q), {len(x)} {config.split} faces")
    run.counts["au_graph.faces"] += int(len(x))
    run.counts["au_graph.rows"] += len(au_names) ** 2
    off = co.A.copy()
    np.fill_diagonal(off, 0)
    top = np.dstack(np.unravel_index(np.argsort(-off, axis=None)[:10], off.shape))[0]
    return {
        "faces": int(len(x)),
        "aus": list(au_names),
        "never_present": [au_names[i] for i in co.never_present],
        "top_links": [f"P({au_names[p]}|{au_names[q]})={off[p, q]:.2f}" for p, q in top],
        "plot": str(run.dir / "au_graph.png") if config.plot else None,
    }


def load_au_graph(store: Store) -> tuple[list[str], np.ndarray]:
    """(au_names, A (M, M) float32) from table `au_graph`, AU order of :data:`AU_NAMES` then AU28."""
    t = store.read("au_graph", columns=["au_p", "au_q", "p_given_q"])
    if t.num_rows == 0:
        raise ValueError("table `au_graph` is empty: run the au_graph stage first")
    present = set(pc.unique(t.column("au_p")).to_pylist())
    order = (*AU_NAMES, "AU28")
    names = [a for a in order if a in present] + sorted(present - set(order))
    idx = {a: i for i, a in enumerate(names)}
    A = np.full((len(names), len(names)), np.nan, np.float32)
    for p, q, v in zip(t.column("au_p").to_pylist(), t.column("au_q").to_pylist(),
                       t.column("p_given_q").to_pylist(), strict=True):
        A[idx[p], idx[q]] = v
    if np.isnan(A).any():
        raise ValueError("table `au_graph` is incomplete (missing AU pairs)")
    return names, A
