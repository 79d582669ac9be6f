"""Peak RSS of the score stage's verdict pass above its compact arrays, on synthetic probabilities of N rows
(the arrays score_collection keeps: float32 probs/alpha/sem, float64 AU-view probs, int labels, Arrow ids).

    PYTHONPATH=$PWD python benchmarks/probe_verdict_memory.py 1000000 whole   # relabel.verdicts, then rows
    PYTHONPATH=$PWD python benchmarks/probe_verdict_memory.py 1000000 parts   # relabel.verdicts_by_part

RSS sampled every 0.05 s after the arrays exist (issue 16; docs/scaling.md)."""
import json
import sys
import time

import numpy as np
import psutil
import pyarrow as pa

from ferclean.relabel import RelabelConfig, verdicts

n, mode = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
c = 7
classes = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "angry"]
true = rng.integers(0, c, n)
labels = np.where(rng.random(n) < 0.3, rng.integers(0, c, n), true)
logits = rng.normal(0, 1, (n, c)).astype(np.float32); logits[np.arange(n), true] += 1.0
probs = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
alpha = rng.random(n).astype(np.float32); sem = rng.random((n, c)).astype(np.float32)
au = rng.dirichlet(np.ones(c), n)
ids = pa.array([f"images/{i // 1000:04d}/s{i:07d}.png" for i in range(n)])
names = pa.array([classes[y] for y in labels])
class Q:
    def __getitem__(self, i): return []
    def __len__(self): return n
del logits, true
import gc
import threading

gc.collect()
proc = psutil.Process()
base = proc.memory_info().rss
top = [base]
def sample():
    while True:
        top[0] = max(top[0], proc.memory_info().rss); time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
t0 = time.process_time()
cfg = RelabelConfig()
trust = {}
kw = {"au_probs": au, "trust": trust, "review_reason": "domain_shift", "model_accuracy": 0.5, "labels": labels}
rows = 0
if mode == "whole":
    v = verdicts(ids, names, classes, probs.astype(np.float64), alpha, sem, np.ones(n, bool), Q(), cfg, **kw)
    for s in range(0, n, 8192):
        e = min(s + 8192, n)
        rows += v.rows(s, e, ids[s:e].to_pylist(), names[s:e].to_pylist(), "r", "ulcag").num_rows
else:
    from ferclean.relabel import verdicts_by_part
    for t in verdicts_by_part(ids, names, classes, probs, alpha, sem, Q(), cfg, "r", "ulcag", part_size=8192, **kw):
        rows += t.num_rows
time.sleep(0.2)
peak = top[0]
print(json.dumps({"n": n, "mode": mode, "rows": rows, "base_mb": round(base / 2**20), "peak_above_arrays_mb": round((peak - base) / 2**20),
                  "cpu_s": round(time.process_time() - t0, 1), "relabels": trust.get("relabels")}))
