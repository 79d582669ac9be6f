"""The image stages' bookkeeping does not grow with the collection in Python objects (issue 16).

At 1 M samples the faces and aus stages peaked ~1.5 GB above their 10k peaks: each shard plan held every
sample id and sha as Python strings (a tuple per shard, a list and a dict of pairs while planning), twice per
stage. The plan now stays in Arrow columns; these tests pin that it is the same plan as the earlier
pure-Python rule (kept here as the reference), that its Python allocations are small, and that a shard's rows
(read with its id range, so Parquet statistics skip other parts) are the rows the old whole-table filter gave.
"""

from __future__ import annotations

import hashlib
import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ferclean.shards import Shard, incremental_plan, load_rows, plan_shards, shard_key
from ferclean.store import Store


def reference_plan(stage, cfg, current, previous, shard_size):
    """The planning rule as it was (pure Python), returning (key, ids, derive_from) per shard."""
    now = dict(current)
    shards, covered = [], set()
    for key, members in previous:
        alive = [(a, b) for a, b in members if now.get(a) == b]
        if not alive:
            continue
        ids = tuple(a for a, _ in alive)
        covered.update(ids)
        if len(alive) == len(members):
            shards.append((key, ids, None))
        else:
            shards.append((shard_key(stage, cfg, alive, len(shards)), ids, key))
    rest = [(a, b) for a, b in current if a not in covered]
    for start in range(0, len(rest), shard_size):
        chunk = rest[start : start + shard_size]
        shards.append((shard_key(stage, cfg, chunk, len(shards)), tuple(a for a, _ in chunk), None))
    return shards


@pytest.mark.parametrize("seed", range(6))
def test_arrow_plan_equals_the_reference_rule(seed):
    rng = np.random.default_rng(seed)
    ids = sorted({f"img{int(i):06d}" for i in rng.integers(0, 10**6, 400)})
    current = [(i, hashlib.sha256(i.encode()).hexdigest()) for i in ids]
    size = int(rng.integers(1, 60))
    first = incremental_plan("faces", "cfg", current, [], size)
    assert [(s.key, s.sample_ids, s.derive_from) for s in first] == reference_plan("faces", "cfg", current, [], size)
    # the next night: deletions, replaced images, additions interleaved, members of one shard kept apart
    previous = [(s.key, [(i, dict(current)[i]) for i in s.sample_ids]) for s in first]
    if len(previous) > 2:
        k, m = previous[1]
        previous[1] = (k, m[1:] + m[:1])  # a plan whose rows are not in id order
    nxt = {i: sha for i, sha in current if rng.random() > 0.1}
    for i in list(nxt)[:: 7]:
        nxt[i] = "replaced"
    for i in rng.integers(0, 10**6, 50):
        nxt.setdefault(f"img{int(i):06d}", "new")
    nxt = sorted(nxt.items())
    got = incremental_plan("faces", "cfg", nxt, previous, size)
    want = reference_plan("faces", "cfg", nxt, previous, size)
    assert [(s.key, s.sample_ids, s.derive_from) for s in got] == want
    assert any(d for _, _, d in want) and any(not d for _, _, d in want)


def _samples_store(tmp_path, n: int, parts: int = 4) -> Store:
    """A store whose `samples` table has only the two columns planning reads (written directly)."""
    store = Store(tmp_path / "out")
    d = store.table_dir("samples")
    d.mkdir(parents=True)
    ids = np.array([f"images/{i // 1000:04d}/s{i:07d}.png" for i in range(n)])
    for k, idx in enumerate(np.array_split(np.random.default_rng(0).permutation(n), parts)):
        pq.write_table(pa.table({"sample_id": ids[idx], "content_sha256": [f"{i:064x}" for i in idx]}),
                       d / f"part-{k:03d}.parquet")
    return store


def test_a_plan_holds_no_python_string_per_sample(tmp_path):
    n = 200_000
    store = _samples_store(tmp_path, n)
    tracemalloc.start()
    shards = plan_shards(store, "faces", {"v": 1}, shard_size=4096)
    again = plan_shards(store, "faces", {"v": 1}, shard_size=4096)  # through the stored plan
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sum(s.size for s in shards) == n and [s.key for s in again] == [s.key for s in shards]
    assert all(isinstance(s.ids, pa.Array) for s in shards)
    # the pure-Python plan (before issue 16) peaked at 116 MB of Python objects here (~600 bytes a sample),
    # this one at 1.6 MB; Arrow buffers
    # are not Python allocations
    assert peak < 8 * 2**20, f"planning allocated {peak / 2**20:.1f} MB of Python objects for {n} samples"


def test_shard_rows_equal_the_whole_table_filter(tmp_path):
    store = _samples_store(tmp_path, 5000, parts=7)
    shards = plan_shards(store, "faces", {"v": 1}, shard_size=700)
    odd = Shard("faces", 99, "odd", pa.array(["images/0000/s0000003.png", "images/0004/s0004999.png"]))
    for s in [*shards, odd]:
        got = load_rows(store, s, "samples", ["sample_id", "content_sha256"])
        want = store.read("samples", ["sample_id", "content_sha256"],
                          pc.field("sample_id").isin(s.ids)).sort_by("sample_id")
        assert got.equals(want) and got.num_rows == s.size
