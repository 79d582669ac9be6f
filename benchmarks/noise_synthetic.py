"""Synthetic label noise on the high-agreement FER2013 subset (FER+ plurality >= 7 of 10 votes).

Truth = FER+ plurality. For each rate r in 10/20/30 %: flip r of every class's labels to a random
other class; cross-fit `ulcag` on the noisy labels; verdicts with `ferclean.relabel.decide`;
noise-detection precision/recall/F1 (flag = relabel or review); then train `ce` on noisy labels,
on cleaned labels (label_final: relabels applied, drops removed), on filtered labels (cleaned
minus the review samples) and on true labels and report
accuracy on a clean held-out set (high-agreement rows of the valid split).

The classifier and detector use `TrainConfig` defaults (the default CPU configuration: compact
CNN width 32 at 48 px, 8 epochs, batch 64, bf16 autocast where the CPU has it) unless overridden.
Pseudo AUs: with `--aus-store RUN` the `aus` table of a curate run over labels.csv (what the
product uses; label-free), otherwise EMFACS prototypes of the noisy label.

Usage: python benchmarks/noise_synthetic.py --train 8000 --aus-store RUN --rates 0.1 --tag r10
Writes benchmarks/results/noise_synthetic[-TAG].json after every rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench_common import PLURALITY, aus_columns, prf

from ferclean.au_view import combine, crossfit_au_view
from ferclean.classes import FER7
from ferclean.relabel import RelabelConfig, decide, final_labels
from ferclean.train.config import TrainConfig
from ferclean.train.data import cooccurrence_graph, decode_crops, prototype_aus
from ferclean.train.engine import fit, predict
from ferclean.train.stage import crossfit, fold_assignment

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013"
RESULTS = Path(__file__).resolve().parent / "results"


def flip_per_class(y: np.ndarray, rate: float, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Flip round(rate * n_c) labels of every class c to a uniformly drawn other class."""
    out = y.copy()
    for c in range(n_classes):
        idx = np.flatnonzero(y == c)
        pick = rng.choice(idx, size=int(round(rate * len(idx))), replace=False)
        others = np.array([k for k in range(n_classes) if k != c])
        out[pick] = rng.choice(others, size=len(pick))
    return out


def high_agreement(df: pd.DataFrame, min_votes: int) -> pd.DataFrame:
    votes = df[list(PLURALITY)]
    top = votes.max(axis=1)
    df = df.assign(truth=votes.idxmax(axis=1).map(PLURALITY))
    return df[(top >= min_votes) & ~df["label_ambiguous"].astype(bool)]


def verdicts(noisy: np.ndarray, truth: np.ndarray, scores: dict, au_probs: np.ndarray | None) -> dict:
    """RelabelConfig() verdicts on the network's scores, combined with the AU view when given."""
    rule = RelabelConfig()
    probs = combine(scores["probs"].astype(np.float64), au_probs, rule.au_view_weight)
    d = decide(noisy, probs, scores["alpha"], scores["sem_dist"], rule)
    flag = np.isin(d.action, ["relabel", "review"])
    fin = final_labels(noisy, d.action, d.suggested)
    rel = d.action == "relabel"
    row = prf(flag, noisy != truth)
    row.update({"relabel": int(rel.sum()), "review": int((d.action == "review").sum()),
                "relabel_precision": round(float((fin[rel] == truth[rel]).mean()), 4) if rel.any() else None,
                "label_acc_noisy": round(float((noisy == truth).mean()), 4),
                "label_acc_final": round(float((fin == truth).mean()), 4),
                "temperature": round(float(d.temperature), 3)})
    return {"row": row, "final": fin, "action": d.action}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=8000, help="high-agreement train rows drawn (0: all)")
    ap.add_argument("--test", type=int, default=0, help="high-agreement valid rows drawn as the clean test set (0: all)")
    ap.add_argument("--size", type=int, default=None, help="input px (default: TrainConfig's)")
    ap.add_argument("--width", type=int, default=None, help="CNN width (default: TrainConfig's)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (default: TrainConfig's)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: TrainConfig's)")
    ap.add_argument("--aus-store", default=None, help="curate run over fer2013/labels.csv whose aus table gives the pseudo AUs")
    ap.add_argument("--no-true", action="store_true", help="skip the classifier trained on the true labels")
    ap.add_argument("--rates", default="0.1,0.2,0.3")
    ap.add_argument("--cache", default=None, help="folder for each rate's out-of-fold scores (rate<r>.npz): "
                    "saved after the cross-fit, reused when present (no new cross-fit)")
    ap.add_argument("--scores-only", action="store_true", help="stop after the cross-fits (fill --cache)")
    ap.add_argument("--min-votes", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="reduced")
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"noise_synthetic-{args.tag}.json"
    df = pd.read_csv(ROOT / "labels.csv")
    tr = high_agreement(df[df.split == "train"], args.min_votes)
    tr = tr.sample(n=min(args.train or len(tr), len(tr)), random_state=args.seed)
    te = high_agreement(df[df.split == "valid"], args.min_votes)
    te = te.sample(n=min(args.test or len(te), len(te)), random_state=args.seed)
    overrides = {k: v for k, v in {"input_size": args.size, "width": args.width, "epochs": args.epochs,
                                   "batch_size": args.batch}.items() if v is not None}
    cfg = TrainConfig(seed=args.seed, checkpoint=False, backbone="cnn", **overrides)
    x_tr = decode_crops([ROOT / p for p in tr.image_path], cfg.input_size)
    x_te = decode_crops([ROOT / p for p in te.image_path], cfg.input_size)
    y_tr = np.array([FER7.index(t) for t in tr.truth])
    y_te = np.array([FER7.index(t) for t in te.truth])
    store_aus = None
    if args.aus_store:
        presence, names = aus_columns(args.aus_store, list(tr.image_path), "_c")
        store_aus = (np.nan_to_num(presence).astype(np.float32), names)
        intensity = aus_columns(args.aus_store, list(tr.image_path), "_r")[0]

    def test_acc(x: np.ndarray, y: np.ndarray) -> float:
        res = fit(x, y, "ce", cfg)
        return round(float((predict(res.model, x_te, "ce")["probs"].argmax(1) == y_te).mean()), 4)

    t0 = time.time()
    result: dict = {"protocol": {**vars(args), "train_rows": len(tr), "test_rows": len(te),
                                 "pseudo_aus": (f"aus table of {args.aus_store} ({len(store_aus[1])} AUs)" if store_aus
                                                else "EMFACS prototypes of the noisy label"),
                                 "detector": "ulcag 3-fold OOF x AU view (same folds), RelabelConfig() verdicts; "
                                             "network_only: the same without the AU view",
                                 "classifier": "ce (same backbone)",
                                 "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads 1",
                                 "train_config": cfg.model_dump(mode="json")},
                    "true_labels_test_acc": None if (args.no_true or args.scores_only) else test_acc(x_tr, y_tr),
                    "rates": {}}
    out_path.write_text(json.dumps(result, indent=2))
    for rate in [float(r) for r in args.rates.split(",")]:
        rng = np.random.default_rng([args.seed, round(rate * 1000)])  # same draw whatever the --rates order
        noisy = flip_per_class(y_tr, rate, len(FER7), rng)
        aus = store_aus[0] if store_aus else prototype_aus([FER7[k] for k in noisy])
        cached = Path(args.cache) / f"rate{rate}.npz" if args.cache else None
        if cached is not None and cached.exists():
            z = np.load(cached)
            if not np.array_equal(z["noisy"], noisy):
                raise SystemExit(f"{cached} was made with other noisy labels (seed / rate order)")
            scores = {k: z[k] for k in ("probs", "alpha", "sem_dist")}
            fit_s = float(z["seconds"])
        else:
            t_fit = time.time()
            scores = crossfit(x_tr, noisy, "ulcag", cfg, aus, cooccurrence_graph(aus))
            fit_s = round(time.time() - t_fit, 1)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cached, probs=scores["probs"], alpha=scores["alpha"], sem_dist=scores["sem_dist"],
                         noisy=noisy, truth=y_tr, seconds=fit_s)
        if args.scores_only:
            continue
        # the product's verdicts: network x AU view (when the aus table is there), and the network alone
        au_probs = None
        if store_aus:
            au_probs = crossfit_au_view(intensity, noisy, fold_assignment(noisy, cfg.folds, cfg.seed), len(FER7))
        prod = verdicts(noisy, y_tr, scores, au_probs)
        fin, keep = prod["final"], prod["final"] >= 0  # label_final: relabels applied, review keeps its label
        row = {**prod["row"], "crossfit_seconds": fit_s,
               "test_acc_noisy": test_acc(x_tr, noisy),
               "test_acc_cleaned": test_acc(x_tr[keep], fin[keep]), "cleaned_train_rows": int(keep.sum())}
        unflagged = keep & (prod["action"] != "review")
        row["test_acc_filtered"] = test_acc(x_tr[unflagged], fin[unflagged])
        row["filtered_train_rows"] = int(unflagged.sum())
        if au_probs is not None:
            alone = verdicts(noisy, y_tr, scores, None)
            k2 = alone["final"] >= 0
            row["network_only"] = {**alone["row"], "test_acc_cleaned": test_acc(x_tr[k2], alone["final"][k2])}
        result["rates"][str(rate)] = row
        result["wall_seconds"] = round(time.time() - t0, 1)
        out_path.write_text(json.dumps(result, indent=2))
        print(json.dumps({rate: row}), flush=True)


if __name__ == "__main__":
    main()
