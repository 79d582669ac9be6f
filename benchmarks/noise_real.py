"""Real label noise on FER2013 (train split) scored against the FER+ crowd plurality.

For each method: 3-fold cross-fitted out-of-sample scores -> `ferclean.relabel.decide` verdicts.
A flag is action in (relabel, review); a true issue is label != ferplus_majority. Scored on rows
whose plurality is one of the 7 FER classes and label_ambiguous is False. cleanlab 2.9
`find_label_issues` runs on the ce out-of-fold probabilities of the same run.

Pseudo AUs: the `aus` stage is not used here (it is not available on this data yet); the
auxiliary branch gets EMFACS prototype AUs of the given label (`pseudo_aus='prototype'`).

Usage: python benchmarks/noise_real.py --n 2400 --size 32 --width 16 --epochs 8
Writes benchmarks/results/noise_real[-TAG].json after every method.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench_common import PLURALITY, prf

from ferclean.classes import FER7
from ferclean.relabel import RelabelConfig, decide, final_labels
from ferclean.train.config import TrainConfig
from ferclean.train.data import cooccurrence_graph, decode_crops, prototype_aus
from ferclean.train.stage import crossfit

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"
RESULTS = Path(__file__).resolve().parent / "results"


def load(n: int | None, seed: int) -> pd.DataFrame:
    df = pd.read_csv(ROOT / "labels.csv")
    df = df[df.split == "train"].reset_index(drop=True)
    if n and n < len(df):
        df = df.sample(n=n, random_state=seed).reset_index(drop=True)
    df["plurality"] = df["ferplus_majority"].map(PLURALITY)
    df["eval"] = df["plurality"].notna() & ~df["label_ambiguous"].astype(bool)
    return df


def evaluate(df: pd.DataFrame, labels: np.ndarray, scores: dict, cfg: RelabelConfig) -> dict:
    ev = df["eval"].to_numpy()
    plural = np.array([FER7.index(p) if isinstance(p, str) else -1 for p in df["plurality"]])
    truth = labels != plural
    d = decide(labels, scores["probs"].astype(np.float64), scores["alpha"], scores["sem_dist"], cfg)
    flag = np.isin(d.action, ["relabel", "review"])
    fin = final_labels(labels, d.action, d.suggested)
    out = prf(flag[ev], truth[ev])
    out.update({
        "relabel": int((d.action[ev] == "relabel").sum()), "review": int((d.action[ev] == "review").sum()),
        "relabel_precision": round(float((fin[ev] == plural[ev])[d.action[ev] == "relabel"].mean()), 4)
        if (d.action[ev] == "relabel").any() else None,
        "acc_before": round(float((labels[ev] == plural[ev]).mean()), 4),
        "acc_after": round(float((fin[ev] == plural[ev]).mean()), 4),
        "model_argmax_acc": round(float((scores["probs"].argmax(1)[ev] == plural[ev]).mean()), 4),
    })
    out["temperature"] = round(float(d.temperature), 3)
    from sklearn.metrics import roc_auc_score

    p_orig = scores["probs"][np.arange(len(labels)), labels]
    out["auc_1_minus_p_label"] = round(float(roc_auc_score(truth[ev], -p_orig[ev])), 4)
    if scores["sem_dist"] is not None:
        out["auc_sem_dist_label"] = round(float(roc_auc_score(truth[ev], scores["sem_dist"][np.arange(len(labels)), labels][ev])), 4)
    if scores["alpha"] is not None:
        out["auc_1_minus_alpha"] = round(float(roc_auc_score(truth[ev], -scores["alpha"][ev])), 4)
    # Diagnostic only (chosen on the reference, not a deployable number): best single threshold on p(label).
    best = max((prf((p_orig < t)[ev], truth[ev])["f1"], t) for t in np.linspace(0.05, 0.8, 31))
    out["oracle_threshold_f1_on_p_label"] = {"f1": best[0], "threshold": round(float(best[1]), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2400, help="random subset of the train split (0 = all)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--methods", default="ce,scn,ulcag")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="reduced")
    ap.add_argument("--cache", default="/tmp/ferclean_noise_real")
    args = ap.parse_args()
    out_path = RESULTS / f"noise_real-{args.tag}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) / args.tag
    cache.mkdir(parents=True, exist_ok=True)
    df = load(args.n, args.seed)
    t0 = time.time()
    images = decode_crops([ROOT / p for p in df.image_path], args.size)
    labels = np.array([FER7.index(lab) for lab in df.label], dtype=np.int64)
    aus = prototype_aus(list(df.label))
    a_bar = cooccurrence_graph(aus)
    cfg = TrainConfig(input_size=args.size, width=args.width, epochs=args.epochs, batch_size=args.batch,
                      lr=args.lr, folds=args.folds, seed=args.seed, checkpoint=False, backbone="cnn")
    result = {"protocol": {**vars(args), "rows": len(df), "eval_rows": int(df["eval"].sum()),
                           "pseudo_aus": "EMFACS prototypes of the given label", "machine": "2-core shared CPU",
                           "train_config": cfg.model_dump(mode="json")},
              "methods": {}}
    rcfg = RelabelConfig()
    for method in args.methods.split(","):
        f = cache / f"{method}.npz"
        if f.exists():
            z = np.load(f, allow_pickle=True)
            scores = {k: (None if z[k].shape == () else z[k]) for k in ("probs", "alpha", "sem_dist")}
            secs = float(z["seconds"])
        else:
            t = time.time()
            scores = crossfit(images, labels, method, cfg, aus, a_bar,
                              log=lambda r: print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True))
            secs = time.time() - t
            np.savez(f, probs=scores["probs"], alpha=scores["alpha"], sem_dist=scores["sem_dist"], seconds=secs)
        res = evaluate(df, labels, scores, rcfg.model_copy(update={"method": method}))
        res["crossfit_seconds"] = round(secs, 1)
        result["methods"][method] = res
        if method == "ce":
            from cleanlab.filter import find_label_issues

            ev = df["eval"].to_numpy()
            plural = np.array([FER7.index(p) if isinstance(p, str) else -1 for p in df["plurality"]])
            issues = find_label_issues(labels, scores["probs"].astype(np.float64) / scores["probs"].sum(1, keepdims=True))
            fin = np.where(issues, scores["probs"].argmax(1), labels)
            cl = prf(issues[ev], (labels != plural)[ev])
            cl.update({"acc_before": round(float((labels[ev] == plural[ev]).mean()), 4),
                       "acc_after_argmax": round(float((fin[ev] == plural[ev]).mean()), 4)})
            result["cleanlab_on_ce"] = cl
        result["wall_seconds"] = round(time.time() - t0, 1)
        out_path.write_text(json.dumps(result, indent=2))
        print(json.dumps({method: res}), flush=True)
    if "cleanlab_on_ce" in result and "ulcag" in result["methods"]:
        result["ulcag_f1_over_cleanlab"] = round(result["methods"]["ulcag"]["f1"] / max(result["cleanlab_on_ce"]["f1"], 1e-9), 3)
        out_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
