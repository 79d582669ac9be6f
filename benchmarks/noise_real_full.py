"""Real label noise on the whole FER2013 train split, with the pipeline's own pseudo AUs.

Unlike benchmarks/noise_real.py (subsets, prototype AUs), this reads a curate output folder that
has run through `--until au_graph` (samples, faces, aus, au_graph tables), so the auxiliary branch
learns the geometric pseudo AUs that the aus stage computed from each image, and the GCN uses the
au_graph table. Each method's 3-fold out-of-sample scores are computed by a separate process (run
two at once on 2 cores), then `--evaluate` scores all of them against the FER+ plurality and runs
cleanlab's find_label_issues on the ce probabilities.

    ferclean curate ../shared/data/fer2013/labels.csv --out RUN --until au_graph
    python benchmarks/noise_real_full.py --store RUN --method ce &      # one core each
    python benchmarks/noise_real_full.py --store RUN --method ulcag &
    python benchmarks/noise_real_full.py --store RUN --evaluate         # -> results/noise_real_full.json/.md
    python benchmarks/noise_real_full.py --store RUN --analyse-only     # no training: --evaluate plus the
                                                                        # held-out rule study (relabel_rules.py)

--evaluate reports each method under both verdict rules (rule=threshold, the previous default, and
rule=bayes, the current one).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_common import RESULTS, prf
from bench_common import load_train_split as load

from ferclean.relabel import RelabelConfig, decide, final_labels
from ferclean.store import Store
from ferclean.train.config import TrainConfig
from ferclean.train.data import decode_crops
from ferclean.train.stage import au_graph_for, crossfit



def compute(args: argparse.Namespace, data: dict, cache: Path) -> None:
    import torch

    torch.set_num_threads(args.threads)
    images = decode_crops([Path(p) for p in data["paths"]], args.size)
    a_bar, _ = au_graph_for(Store(args.store), data["au_names"], data["aus"])
    cfg = TrainConfig(input_size=args.size, width=args.width, epochs=args.epochs, batch_size=args.batch,
                      folds=3, seed=0, checkpoint=False, backbone="cnn", num_threads=args.threads,
                      **dict(kv.split("=", 1) for kv in args.set))
    t = time.time()
    out = crossfit(images, data["labels"], args.method, cfg, data["aus"], a_bar,
                   log=lambda r: print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                                   for k, v in r.items()}), flush=True))
    np.savez(cache / f"{args.name or args.method}.npz", probs=out["probs"], alpha=out["alpha"], sem_dist=out["sem_dist"],
             seconds=time.time() - t, config=json.dumps(cfg.model_dump(mode="json")))


def evaluate(args: argparse.Namespace, data: dict, cache: Path) -> None:
    from cleanlab.filter import find_label_issues

    labels, plural, ev = data["labels"], data["plural"], data["eval"]
    truth = labels != plural
    res: dict = {"protocol": {"store": args.store, "rows": len(labels), "eval_rows": int(ev.sum()),
                              "noise_rate": round(float(truth[ev].mean()), 4),
                              "pseudo_aus": f"aus table (geometric backend), {len(data['au_names'])} AUs; "
                                            f"{data['missing_aus']} samples without a primary face row",
                              "machine": "2-core CPU (x86_64), no GPU"},
                 "acc_raw": round(float((labels[ev] == plural[ev]).mean()), 4), "methods": {}}
    for f in sorted(cache.glob("*.npz")):
        z = np.load(f, allow_pickle=True)
        scores = {k: (None if z[k].shape == () else z[k]) for k in ("probs", "alpha", "sem_dist")}
        for rule in ("threshold", "bayes"):
            res["methods"][f"{f.stem} ({rule})"] = _score_rule(labels, plural, ev, truth, scores, z, f.stem, rule)
        method = f.stem
        if method == "ce":
            p = scores["probs"].astype(np.float64)
            issues = find_label_issues(labels, p / p.sum(1, keepdims=True))
            fin_cl = np.where(issues, p.argmax(1), labels)
            cl = prf(issues[ev], truth[ev])
            cl["acc_final_argmax"] = round(float((fin_cl[ev] == plural[ev]).mean()), 4)
            res["cleanlab_on_ce"] = cl
    _write(res)


def _score_rule(labels, plural, ev, truth, scores, z, method: str, rule: str) -> dict:
    """Flag P/R/F1, relabels and final accuracy of one method under one verdict rule."""
    d = decide(labels, scores["probs"].astype(np.float64), scores["alpha"], scores["sem_dist"],
               RelabelConfig(method=method, rule=rule))
    flag = np.isin(d.action, ["relabel", "review"])
    fin = final_labels(labels, d.action, d.suggested)
    m = prf(flag[ev], truth[ev])
    rel = d.action == "relabel"
    m.update({"relabel": int(rel.sum()), "review": int((d.action == "review").sum()),
              "relabel_precision": round(float((d.suggested[rel & ev] == plural[rel & ev]).mean()), 4) if (rel & ev).any() else None,
              "acc_final": round(float((fin[ev] == plural[ev]).mean()), 4),
              "model_argmax_acc": round(float((scores["probs"].argmax(1)[ev] == plural[ev]).mean()), 4),
              "crossfit_seconds": round(float(z["seconds"]), 1),
              "train_config": json.loads(str(z["config"]))})
    return m


def _write(res: dict) -> None:
    if "cleanlab_on_ce" in res:
        for k, m in res["methods"].items():
            m["f1_over_cleanlab"] = round(m["f1"] / max(res["cleanlab_on_ce"]["f1"], 1e-9), 3)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "noise_real_full.json").write_text(json.dumps(res, indent=1))
    lines = ["# Real label noise, FER2013 train split, full pipeline pseudo AUs", "",
             f"Rows {res['protocol']['rows']}, scored {res['protocol']['eval_rows']} (plurality in 7 classes, "
             f"not ambiguous); noise rate {res['protocol']['noise_rate']}; raw-label accuracy {res['acc_raw']}.",
             f"Pseudo AUs: {res['protocol']['pseudo_aus']}. Machine: {res['protocol']['machine']}.", "",
             "| method | flagged | precision | recall | F1 | F1 / cleanlab | relabel | relabel prec. | final acc | argmax acc | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, m in res["methods"].items():
        lines.append(f"| {k} | {m['flagged']} | {m['precision']} | {m['recall']} | {m['f1']} | {m.get('f1_over_cleanlab')} | "
                     f"{m['relabel']} | {m['relabel_precision']} | {m['acc_final']} | {m['model_argmax_acc']} | {m['crossfit_seconds']} |")
    if "cleanlab_on_ce" in res:
        c = res["cleanlab_on_ce"]
        lines.append(f"| cleanlab find_label_issues on ce | {c['flagged']} | {c['precision']} | {c['recall']} | {c['f1']} | 1.0 | "
                     f"{c['flagged']} (argmax) | | {c['acc_final_argmax']} | | |")
    (RESULTS / "noise_real_full.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="curate output folder with aus and au_graph")
    ap.add_argument("--method", help="compute this method's out-of-fold scores")
    ap.add_argument("--evaluate", action="store_true")
    ap.add_argument("--analyse-only", action="store_true",
                    help="read the saved CACHE/*.npz (never train): --evaluate plus benchmarks/relabel_rules.py")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="/tmp/ferclean_noise_full")
    ap.add_argument("--name", help="file name (without .npz) of the scores; default: the method")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig override, e.g. --set relabel_guard=classifier (repeatable)")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = load(Store(args.store))
    if args.method and not args.analyse_only:
        compute(args, data, cache)
    if args.evaluate or args.analyse_only:
        evaluate(args, data, cache)
    if args.analyse_only:
        from relabel_rules import RESULTS as _r, analyse, load_scores, to_markdown

        res = analyse(data["labels"], data["plural"], data["eval"], load_scores(cache))
        res["protocol"].update(store=args.store, cache=str(cache))
        (_r / "relabel_rules.json").write_text(json.dumps(res, indent=1))
        md = to_markdown(res, "python benchmarks/noise_real_full.py --store " + args.store + " --analyse-only")
        (_r / "relabel_rules.md").write_text(md)
        print(md)


if __name__ == "__main__":
    main()
