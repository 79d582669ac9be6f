"""Flag / relabel rules on saved out-of-sample scores (no training), held out by a 2-fold split.

Reads the cross-fitted scores that benchmarks/noise_real_full.py saved (CACHE/ce.npz, CACHE/ulcag.npz) and
the train split of the same curate store (row order = noise_real_full.load), and scores every rule against
the FER+ plurality on the rows whose plurality is one of the 7 classes and whose label is not ambiguous.

Honesty: the rows are split in two folds by a fixed seed; every rule parameter (thresholds, margins,
grid choices, stacking weights) is chosen on one fold's FER+ plurality and applied to the other fold, and
the reported numbers pool the two held-out halves (each row judged by parameters that never saw it).
Rules marked FER+-free use no reference labels at all (temperature, confident joint: given labels only).
cleanlab's find_label_issues runs on the same probabilities (FER+-free) and is scored on the same rows.

    python benchmarks/relabel_rules.py --store /tmp/ferfull/run --cache /tmp/ferclean_noise_full
    # -> results/relabel_rules.json / .md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bench_common import prf

from ferclean.relabel import (RelabelConfig, apply_temperature, bayes_posterior,  # noqa: E402
                              calibrate_temperature, confident_joint, decide, final_labels)

RESULTS = Path(__file__).resolve().parent / "results"
FLAGGED = ["relabel", "review"]


def best_f1_threshold(score: np.ndarray, truth: np.ndarray) -> float:
    """Threshold t maximising the F1 of `score >= t` (ties broken towards fewer flags)."""
    o = np.argsort(-score, kind="stable")
    tp = np.cumsum(truth[o])
    f1 = 2 * tp / (np.arange(1, len(score) + 1) + truth.sum())
    return float(score[o][int(f1.argmax())])


def calibrated(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = p / p.sum(1, keepdims=True)
    return apply_temperature(p, calibrate_temperature(p, labels))


def analyse(labels: np.ndarray, plural: np.ndarray, ev: np.ndarray, scores: dict[str, dict],
            seed: int = 0, ref_k: int = 250) -> dict:
    """All rules; `scores[method]` = {probs, alpha, sem_dist} (alpha/sem_dist may be None)."""
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression

    n = len(labels)
    rows = np.arange(n)
    y, truth = labels, labels != plural
    fold = np.random.default_rng(seed).permutation(n) % 2
    out: dict = {"protocol": {"rows": n, "eval_rows": int(ev.sum()), "noise_rate": round(float(truth[ev].mean()), 4),
                              "folds": f"2 folds, numpy default_rng({seed}).permutation(n) % 2; parameters chosen on "
                                       "one fold's eval rows, applied to the other; numbers pool both held-out halves",
                              "acc_raw": round(float((y[ev] == plural[ev]).mean()), 4)},
                 "rules": [], "ceilings": {}}

    def add(name: str, source: str, flag: np.ndarray, fin: np.ndarray | None, fer_free: bool, params=None) -> None:
        m = {"rule": name, "probs": source, "ferplus_free": fer_free, **prf(flag[ev], truth[ev])}
        if fin is not None:
            rel = (fin != y) & ev
            m["relabel"] = int(rel.sum())
            m["relabel_right"] = round(float((fin[rel] == plural[rel]).mean()), 4) if rel.any() else None
            m["acc_final"] = round(float((fin[ev] == plural[ev]).mean()), 4)
        if params is not None:
            m["params"] = params
        out["rules"].append(m)

    probs = {k: v["probs"].astype(np.float64) for k, v in scores.items()}
    cal = {k: calibrated(p, y) for k, p in probs.items()}
    if {"ce", "ulcag"} <= set(cal):
        cal["ce+ulcag"] = (cal["ce"] + cal["ulcag"]) / 2
        probs["ce+ulcag"] = cal["ce+ulcag"]
        scores = {**scores, "ce+ulcag": {"probs": cal["ce+ulcag"], "alpha": scores["ulcag"]["alpha"],
                                         "sem_dist": scores["ulcag"]["sem_dist"]}}
    for src, p in cal.items():
        am = p.argmax(1)
        out["ceilings"][src] = {"argmax_acc": round(float((am[ev] == plural[ev]).mean()), 4),
                                "oracle_relabel_to_argmax": round(float(((y == plural) | (am == plural))[ev].mean()), 4)}

    for src in cal:
        s = scores[src]
        alpha = None if s.get("alpha") is None else np.asarray(s["alpha"], np.float64)
        sem = None if s.get("sem_dist") is None else np.asarray(s["sem_dist"], np.float64)
        # 1. cleanlab on the same probs (raw model probs, as its docs ask), flags -> argmax
        for fb in ("prune_by_noise_rate", "predicted_neq_given", "low_normalized_margin"):
            iss = find_label_issues(y, probs[src] / probs[src].sum(1, keepdims=True), filter_by=fb)
            add(f"cleanlab find_label_issues ({fb}), flags -> argmax", src, iss,
                np.where(iss, probs[src].argmax(1), y), True)
        # 2. current defaults (threshold rule) and the bayes rule with fixed defaults: FER+-free at run time
        for rule in ("threshold", "bayes"):
            d = decide(y, probs[src], alpha, sem, RelabelConfig(rule=rule))
            add(f"decide rule={rule} (RelabelConfig defaults)", src, np.isin(d.action, FLAGGED),
                final_labels(y, d.action, d.suggested), rule == "bayes")
        # 3. held-out tuned thresholds on single scores (flags only)
        pc = cal[src]
        post = bayes_posterior(y, pc, confident_joint(y, pc))
        for sname, sc in (("1 - p(label)", 1 - pc[rows, y]), ("1 - post(label) [bayes]", 1 - post[rows, y])):
            flag, ths = np.zeros(n, bool), []
            for f in (0, 1):
                a, b = ev & (fold != f), fold == f
                t = best_f1_threshold(sc[a], truth[a])
                ths.append(round(t, 4))
                flag[b] = sc[b] >= t
            add(f"flag {sname} >= t (t tuned for F1 on the other fold)", src, flag, None, False, {"t": ths})
        # 4. bayes argmax (FER+-free) and bayes rule with flag threshold + relabel margin tuned per fold
        fin = post.argmax(1)
        add("bayes posterior argmax, no tuning", src, fin != y, fin, True)
        flag, fin, chosen = np.zeros(n, bool), y.copy(), []
        for f in (0, 1):
            a, b = ev & (fold != f), fold == f
            t = best_f1_threshold((1 - post[rows, y])[a], truth[a])
            best_m, best_acc = 0.0, -1.0
            for m in np.linspace(0, 0.6, 13):
                fa = np.where((post.argmax(1) != y) & (post.max(1) - post[rows, y] >= m), post.argmax(1), y)
                acc = float((fa[a] == plural[a]).mean())
                if acc > best_acc + 1e-9:
                    best_m, best_acc = float(m), acc
            chosen.append({"flag_below": round(1 - t, 4), "relabel_margin": best_m})
            rel = (post.argmax(1) != y) & (post.max(1) - post[rows, y] >= best_m)
            flag[b] = ((1 - post[rows, y]) >= t)[b] | rel[b]
            fin[b] = np.where(rel, post.argmax(1), y)[b]
        add("bayes rule, flag_below + relabel_margin tuned on the other fold", src, flag, fin, False, chosen)
        # 5. reference prior from `ref_k` FER+ labels of the other fold (a small audited sample)
        rng = np.random.default_rng(seed + 1)
        flag, fin = np.zeros(n, bool), y.copy()
        for f in (0, 1):
            a = rng.choice(np.flatnonzero(ev & (fold != f)), ref_k, replace=False)
            b = fold == f
            prior = (np.bincount(plural[a], minlength=pc.shape[1]) + 1.0) / (ref_k + pc.shape[1])
            q = bayes_posterior(y, pc, class_prior=prior)
            fin[b] = q.argmax(1)[b]
            flag[b] = (q.argmax(1) != y)[b]
        add(f"bayes posterior argmax with the class prior of {ref_k} reference labels of the other fold",
            src, flag, fin, False, {"ref_labels": ref_k})
    # 6. supervised stacking (needs reference labels): multinomial LR on log probs, label, alpha, sem
    if {"ce", "ulcag"} <= set(cal):
        lg = lambda p: np.log(np.clip(p, 1e-6, 1))  # noqa: E731
        onehot = np.eye(cal["ce"].shape[1])[y]
        feats = [lg(cal["ce"]), lg(cal["ulcag"]), onehot, onehot * lg(cal["ce"]), onehot * lg(cal["ulcag"])]
        if scores["ulcag"].get("alpha") is not None:
            feats += [np.asarray(scores["ulcag"]["alpha"], np.float64)[:, None],
                      np.asarray(scores["ulcag"]["sem_dist"], np.float64)]
        x = np.hstack(feats)
        for k in (500, None):
            rng = np.random.default_rng(seed + 2)
            pr = np.zeros_like(cal["ce"])
            for f in (0, 1):
                a = np.flatnonzero(ev & (fold != f))
                a = a if k is None else rng.choice(a, k, replace=False)
                b = fold == f
                lr = LogisticRegression(C=1.0, max_iter=3000).fit(x[a], plural[a])
                pr[np.ix_(np.flatnonzero(b), lr.classes_)] = lr.predict_proba(x[b])
            fin = pr.argmax(1)
            add(f"stacked LR trained on {'all' if k is None else k} FER+ labels of the other fold, argmax",
                "ce+ulcag", fin != y, fin, False, {"train_labels": k or "all of the other fold"})
    return out


def to_markdown(res: dict, command: str) -> str:
    p = res["protocol"]
    cl = {r["probs"]: r for r in res["rules"] if r["rule"].startswith("cleanlab find_label_issues (prune")}
    lines = ["# Flag and relabel rules on saved out-of-sample scores (FER2013 train, FER+ plurality)", "",
             f"Rows {p['rows']}, scored {p['eval_rows']}; noise rate {p['noise_rate']}; raw-label accuracy {p['acc_raw']}.",
             f"Split: {p['folds']}.", f"Command: `{command}`", "",
             "F1 / cleanlab = F1 over cleanlab's default find_label_issues (prune_by_noise_rate) on the same probs. "
             "FER+-free = no reference label enters the rule. The threshold-rule defaults were chosen on the FER+ plurality "
             "of a 4k subset of this split (marked no); the bayes defaults have no tuned number (flag count = the confident "
             "joint's noise estimate, relabel margin 0), but the design was picked after looking at this study.", "",
             "| probs | rule | FER+-free | flagged | precision | recall | F1 | F1 / cleanlab | relabels | relabel right | final acc | params |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rules"]:
        base = cl.get(r["probs"], cl.get("ce"))
        ratio = round(r["f1"] / base["f1"], 3) if base else None
        lines.append(f"| {r['probs']} | {r['rule']} | {'yes' if r['ferplus_free'] else 'no'} | {r['flagged']} | "
                     f"{r['precision']} | {r['recall']} | {r['f1']} | {ratio} | {r.get('relabel', '')} | "
                     f"{r.get('relabel_right', '') if r.get('relabel_right') is not None else ''} | "
                     f"{r.get('acc_final', '')} | {json.dumps(r.get('params')) if r.get('params') else ''} |")
    lines += ["", "Ceilings (final accuracy if every label were replaced by the model argmax exactly when the argmax "
              "is right, i.e. a perfect relabel gate):", "", "| probs | argmax acc | oracle ceiling |", "|---|---|---|"]
    for k, c in res["ceilings"].items():
        lines.append(f"| {k} | {c['argmax_acc']} | {c['oracle_relabel_to_argmax']} |")
    return "\n".join(lines) + "\n"


def load_scores(cache: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(cache.glob("*.npz")):
        z = np.load(f, allow_pickle=True)
        out[f.stem] = {k: (None if z[k].shape == () else z[k]) for k in ("probs", "alpha", "sem_dist")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="the curate store noise_real_full.py scored")
    ap.add_argument("--cache", default="/tmp/ferclean_noise_full")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the result files")
    args = ap.parse_args()
    from noise_real_full import load

    from ferclean.store import Store

    data = load(Store(args.store))
    res = analyse(data["labels"], data["plural"], data["eval"], load_scores(Path(args.cache)), seed=args.seed)
    res["protocol"]["store"], res["protocol"]["cache"] = args.store, args.cache
    command = "python benchmarks/relabel_rules.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    stem = "relabel_rules" + (f"-{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=1))
    md = to_markdown(res, command)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
