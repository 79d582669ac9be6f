"""Probe (issue 17, session 11; not adopted): a kNN view for relabel-collection. Each new face's k nearest
faces of the source run's training rows (cosine on the model's centred embeddings) vote with their labels (the
source run's cleaned labels, or the raw ones); the vote is mixed into the network's probabilities (weight w)
and the collection re-decided with the default rule. Dev pair only (train rows):

    python benchmarks/knn_view_probe.py SOURCE_RUN_OUT COLLECTION_RUN_OUT

SOURCE_RUN_OUT: a `curate --until train` OUT on train rows; COLLECTION_RUN_OUT: `relabel-collection` with its
model on other train rows (FER+ votes in the manifest). Prints kNN accuracy against the crowd and the gain.
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shift_collection import decide_scores, load_scores  # noqa: E402

from ferclean.au_view import AU_VIEW_METHOD, combine, mix_views  # noqa: E402
from ferclean.dataset_issues.embeddings import load_embedder  # noqa: E402
from ferclean.noise import RelabelConfig, au_view_weight_for, decide, final_labels, view_accuracies  # noqa: E402
from ferclean.primary import primary_faces  # noqa: E402
from ferclean.store import Store  # noqa: E402

def load(out):
    return load_scores(out)


def run(d, **upd):
    return decide_scores(d, **upd)[:5]


src, col = sys.argv[1], sys.argv[2]
s = Store(src); meta = json.load(open(f"{src}/model/model.json")); classes = list(meta['classes']); method = meta['method']
p = s.read("predictions").to_pandas()
oof = p[(p.method == method) & (p.fold >= 0)].set_index("sample_id")
ids = list(oof.index)
samp = s.read("samples").to_pandas().set_index("sample_id")
labels = np.array([classes.index(samp.loc[i, "label_original"]) for i in ids])
probs = np.stack(oof.loc[ids, "probs"].to_numpy()).astype(float)
au = p[(p.method == AU_VIEW_METHOD) & (p.fold >= 0)].set_index("sample_id")
au_probs = np.full_like(probs, np.nan); have = [k for k, i in enumerate(ids) if i in au.index]
au_probs[have] = np.stack(au.loc[[ids[k] for k in have], "probs"].to_numpy())
alpha = oof.loc[ids, "alpha"].to_numpy().astype(float) if "alpha" in oof else None
sem = np.stack(oof.loc[ids, "sem_dist"].to_numpy()).astype(float) if oof["sem_dist"].notna().all() else None
rule = RelabelConfig(method=method)
acc = view_accuracies(labels, probs, au_probs)
d = decide(labels, combine(probs, au_probs, au_view_weight_for(rule, acc)), alpha, sem, rule,
           label_accuracy=acc["label_accuracy"], model_accuracy=acc["model_accuracy"])
fin = final_labels(labels, d.action, d.suggested)
use = (fin >= 0) & (d.action != "review")
print("train rows", len(ids), "fin changed", int((fin[use] != labels[use]).sum()), "used", int(use.sum()))
emb = load_embedder(f"{src}/model")
def crops_of(store, want):
    f = primary_faces(store, ["crop_png"]); m = dict(zip(f["sample_id"].to_pylist(), f["crop_png"].to_pylist()))
    return [m[i] for i in want]
E_tr = emb(crops_of(s, ids))
dcol = load(col)
E_new = emb(crops_of(Store(col), dcol["ids"]))
def norm(x): 
    x = x - E_tr.mean(0); return x / np.linalg.norm(x, axis=1, keepdims=True)
A, B = norm(E_tr), norm(E_new)
sims = B @ A.T
pl = dcol['plural']; ok = pl >= 0
for lab_name, L, U in [("cleaned", fin, use), ("raw", labels, np.ones(len(labels), bool))]:
    for k in (10, 25, 50):
        S = sims[:, U]; LL = L[U]
        nn = np.argpartition(-S, k, axis=1)[:, :k]
        knn = np.zeros((len(B), len(classes)))
        for j in range(k):
            np.add.at(knn, (np.arange(len(B)), LL[nn[:, j]]), 1.0)
        knn = (knn + 0.5) / (k + 0.5 * len(classes))
        print(lab_name, k, "knn acc vs crowd %.3f" % np.mean(knn.argmax(1)[ok] == pl[ok]), "net %.3f" % np.mean(dcol['probs'].argmax(1)[ok] == pl[ok]))
        for w in (0.25, 0.5):
            mixed = mix_views(dcol['probs'], knn, w)
            d2 = dict(dcol); d2['probs'] = mixed
            t, act, sug, sc, info = run(d2)
            print("   w", w, "mix acc %.3f" % np.mean(mixed.argmax(1)[ok] == pl[ok]), "gain %.2f f1 %.3f relabels %d" % (sc['gain_points'], sc['f1'], sc['relabel']))
t, act, sug, sc, info = run(dcol); print("baseline gain %.2f f1 %.3f" % (sc['gain_points'], sc['f1']))
