"""Which landmark estimate gives the best pseudo AUs on FER2013 crops? (needs ../shared/data)

Compares the geometric AUs computed from several 68-point estimates of the same 48 px images:
dlib alone (the faces stage's per-image path, from the fastlm distillation targets cache), dlib
on the mirrored image (mapped back), fastlm, fastlm on the mirror, and averages of these. Rows:
FER+ plurality >= 7/10 votes (as benchmarks/validate_aus.py); the reference (conditional neutral,
FER2013's own neutral label) is fitted on each variant's own train rows. The choice is made on
the train rows; valid is reported beside it.

    python benchmarks/train_fastlm.py --steps targets        # dlib targets cache, if missing
    python benchmarks/landmark_ensembles.py                  # -> results/landmark_ensembles.json

The dlib-on-mirror landmarks take ~100 s (one process) and are cached in /tmp.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench_common import FASTLM_TARGETS as TARGETS
from bench_common import FER, evaluate, load_rows, prototype_aurocs
from bench_common import dlib_flipped_landmarks as _dlib_flipped_chunk

from ferclean.aus.names import AU_NAMES  # noqa: E402
from ferclean.faces.fastlm import predict_landmarks  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FLIP_CACHE = Path("/tmp/ferclean_fastlm/dlib_mirror_rows7.npy")


def main() -> None:
    if not TARGETS.exists():
        sys.exit(f"no dlib targets at {TARGETS}: run benchmarks/train_fastlm.py --steps targets")
    z = np.load(TARGETS)
    index = {p: i for i, p in enumerate(z["paths"])}
    rows = load_rows(7)
    idx = np.array([index[p] for p in rows.image_path])
    imgs = list(z["images"][idx])
    valid = (rows.split == "valid").to_numpy()
    truth = rows.truth.to_numpy()
    if not FLIP_CACHE.exists():
        t = time.time()
        FLIP_CACHE.parent.mkdir(parents=True, exist_ok=True)
        np.save(FLIP_CACHE, _dlib_flipped_chunk([str(FER / p) for p in rows.image_path]))
        print(f"dlib on mirrored images: {time.time() - t:.0f} s", file=sys.stderr)
    dl, dm = z["lm"][idx].astype(np.float64), np.load(FLIP_CACHE)
    fl = predict_landmarks(imgs)
    fm = 2 * predict_landmarks(imgs, flip=True) - fl  # the mirrored prediction alone
    variants = {
        "dlib": dl, "dlib, mirror-averaged": (dl + dm) / 2, "fastlm": fl, "fastlm, mirror-averaged": (fl + fm) / 2,
        "dlib + fastlm (1:1)": (dl + fl) / 2,
        "dlib + fastlm + fastlm mirror (1:1:1) = dlib+fastlm": (dl + fl + fm) / 3,
        "dlib + mirror-averaged fastlm (1:1)": (dl + (fl + fm) / 2) / 2,
        "mirror-averaged dlib + fastlm (1:1)": ((dl + dm) / 2 + fl) / 2,
        "all four (1:1:1:1)": (dl + dm + fl + fm) / 4,
    }
    out: dict = {"rows": int(len(rows)), "valid_rows": int(valid.sum()), "variants": {}}
    for name, lm in variants.items():
        res = evaluate(rows, lm)

        def mean(sel: np.ndarray, res: dict = res) -> float:
            a = prototype_aurocs(res["intensity"][sel], truth[sel], AU_NAMES)
            return round(float(np.mean([v for d in a.values() for v in d.values()])), 4)

        out["variants"][name] = {"train": mean(~valid), "valid": mean(valid), "all": round(res["mean_auroc"], 4),
                                 "AU12_happy": round(res["aurocs"]["happy"]["AU12"], 4),
                                 "lr_5fold_accuracy": round(res["lr_acc"], 4)}
        print(name, out["variants"][name], file=sys.stderr)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "landmark_ensembles.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
