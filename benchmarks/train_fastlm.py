"""Train the fastlm landmark regressor by distillation from dlib on FER2013 (needs ../shared/data).

Steps (each cached, so a rerun only does what is missing):
1. `targets`: dlib's 68 points for every FER2013 image, exactly as the faces stage's pre-aligned
   path produces them (HOG on the 144 px upscale, primary box when found, else the full frame;
   `FacesConfig()` defaults) with a multiprocessing pool of 2. Cached in
   /tmp/ferclean_fastlm/targets.npz (never in the repo): paths, split, lm (N, 68, 2) original px,
   detector (N,) ("dlib" | "full_frame"), images (N, 48, 48) uint8.
2. `train`: :class:`ferclean.faces.fastlm.FastLandmarkNet` on the train split, horizontal flips
   with the 68-point mirror permutation and small random similarity warps as augmentation,
   AdamW + one-cycle, L1 loss on [0, 1] coordinates; 1 torch thread (--threads), bounded by
   --epochs and --max-minutes. Writes ferclean/faces/weights/fastlm.pt (float16 state dict + metadata).
3. `eval`: NME (mean point error / inter-ocular distance of the dlib target, outer eye corners)
   on the valid split, mean / median / 90th percentile, overall and by dlib detector; written to
   benchmarks/results/fastlm_eval.json.
4. `floor` (optional): the same NME between dlib on the mirrored valid images (mapped back) and
   dlib on the originals, i.e. how far dlib's own output moves under a flip.

    python benchmarks/train_fastlm.py [--epochs 12] [--max-minutes 8] [--steps targets,train,eval]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from bench_common import FASTLM_CACHE as CACHE
from bench_common import FASTLM_TARGETS as TARGETS
from bench_common import FER
from bench_common import dlib_flipped_landmarks as _dlib_flipped_chunk

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


# ------------------------------------------------------------------------------------ targets
def _dlib_chunk(paths: list[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """dlib landmarks of `paths` through the stage's own per-image path (primary face)."""
    from ferclean.faces import FacesConfig, analyze_image, get_backend, load_image

    cfg = FacesConfig()
    backend = get_backend(cfg.backend, cfg.upsample, cfg.score_threshold)
    lm = np.zeros((len(paths), 68, 2), np.float32)
    imgs = np.zeros((len(paths), 48, 48), np.uint8)
    det = []
    for i, p in enumerate(paths):
        img = load_image(p)
        recs = analyze_image(img, backend, cfg)
        r = next(r for r in recs if r["is_primary"])
        lm[i] = np.asarray(r["landmarks68"], np.float32).reshape(68, 2)
        imgs[i] = img if img.shape == (48, 48) else __import__("cv2").resize(img, (48, 48))
        det.append(r["detector"])
    return lm, det, imgs


def fer_index() -> tuple[list[str], list[str]]:
    """Unique FER2013 image paths (relative) and their split, in labels.csv order."""
    with open(FER / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    seen: dict[str, str] = {}
    for r in rows:
        seen.setdefault(r["image_path"], r["split"])
    return list(seen), list(seen.values())


def compute_targets(chunk: int = 256, procs: int = 2) -> None:
    """Fill the target cache (all FER2013 images) with a pool of `procs` processes."""
    if TARGETS.exists():
        print(f"targets cached at {TARGETS}")
        return
    rel, split = fer_index()
    paths = [str(FER / p) for p in rel]
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    t0 = time.time()
    lms, dets, imgs = [], [], []
    with Pool(procs) as pool:
        for k, (lm, det, im) in enumerate(pool.imap(_dlib_chunk, chunks)):
            lms.append(lm)
            dets += det
            imgs.append(im)
            if k % 10 == 0:
                print(f"  {sum(len(x) for x in lms)}/{len(paths)} images, {time.time() - t0:.0f} s", file=sys.stderr)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = CACHE / "targets.tmp.npz"
    np.savez(tmp, paths=np.array(rel), split=np.array(split), lm=np.concatenate(lms),
             detector=np.array(dets), images=np.concatenate(imgs))
    os.replace(tmp, TARGETS)
    print(f"dlib targets: {len(paths)} images in {time.time() - t0:.0f} s -> {TARGETS}")


MIRROR_TARGETS = CACHE / "dlib_mirror_all.npy"


def load_targets(mirror_average: bool = False) -> dict[str, np.ndarray]:
    """The target cache; `mirror_average`: `lm` becomes the mean of dlib on the image and dlib on
    its mirror (mapped back), a less noisy target (the two differ by ~0.7 px at 48 px). The
    unaveraged points stay in `lm_dlib` (what evaluation measures against)."""
    z = np.load(TARGETS, allow_pickle=False)
    out = {k: z[k] for k in z.files}
    out["lm_dlib"] = out["lm"]
    if mirror_average:
        if not MIRROR_TARGETS.exists():
            sys.exit(f"no mirrored dlib targets at {MIRROR_TARGETS}: run --steps mirror_targets")
        out["lm"] = (out["lm"].astype(np.float64) + np.load(MIRROR_TARGETS)) / 2
    return out


def compute_mirror_targets(chunk: int = 256, procs: int = 2) -> None:
    """dlib on every mirrored target image (mapped back), cached in MIRROR_TARGETS."""
    if MIRROR_TARGETS.exists():
        print(f"mirrored targets cached at {MIRROR_TARGETS}")
        return
    paths = [str(FER / p) for p in load_targets()["paths"]]
    t0 = time.time()
    with Pool(procs) as pool:
        out = list(pool.imap(_dlib_flipped_chunk, [paths[i : i + chunk] for i in range(0, len(paths), chunk)]))
    np.save(MIRROR_TARGETS, np.concatenate(out))
    print(f"dlib on mirrored images: {len(paths)} in {time.time() - t0:.0f} s -> {MIRROR_TARGETS}")


# ------------------------------------------------------------------------------------ training
def normalised_targets(lm_px: np.ndarray, size: int = 48) -> np.ndarray:
    """Original-px landmarks (N, 68, 2) of size x size images -> normalised (x + 0.5) / size."""
    return (lm_px.astype(np.float64) + 0.5) / size


def random_affine(x, y, rng, max_deg: float = 8.0, max_scale: float = 0.06, max_shift: float = 0.05):
    """Random similarity warp of a batch x (N, 1, S, S) and its normalised landmarks y (N, 68, 2).

    Uses affine_grid's align_corners=False frame u = 2 * x_norm - 1: output point u_out samples
    input at A @ u_out + t, so a landmark moves to A^-1 (u_in - t).
    """
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    ang = torch.from_numpy(rng.uniform(-max_deg, max_deg, n)).float().deg2rad()
    sc = torch.from_numpy(rng.uniform(1 - max_scale, 1 + max_scale, n)).float()
    t = torch.from_numpy(rng.uniform(-2 * max_shift, 2 * max_shift, (n, 2))).float()
    rows = [torch.stack([ang.cos(), -ang.sin()], 1), torch.stack([ang.sin(), ang.cos()], 1)]
    a = torch.stack(rows, 1) * sc[:, None, None]
    theta = torch.cat([a, t[:, :, None]], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    xw = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    u = 2 * y - 1
    u_out = torch.linalg.solve(a[:, None], (u - t[:, None]).unsqueeze(-1)).squeeze(-1)
    return xw, (u_out + 1) / 2


def nme(pred_px: np.ndarray, true_px: np.ndarray) -> np.ndarray:
    """Per-image mean point distance / inter-ocular distance (outer eye corners 36, 45 of truth)."""
    iod = np.linalg.norm(true_px[:, 45] - true_px[:, 36], axis=1)
    return np.linalg.norm(pred_px - true_px, axis=2).mean(1) / np.maximum(iod, 1e-6)


def train(epochs: int, max_minutes: float, width: int, batch: int, lr: float, seed: int, out: Path,
          threads: int = 1, mirror_targets: bool = False) -> dict:
    """Train on the FER2013 train split; returns a log dict. Saves float16 weights to `out`."""
    import torch

    from ferclean.faces.fastlm import FastLandmarkNet, flip_landmarks

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    z = load_targets(mirror_targets)
    tr = z["split"] == "train"
    va = ~tr
    x_all = torch.from_numpy(z["images"]).unsqueeze(1).float().div_(255.0)
    y_all = torch.from_numpy(normalised_targets(z["lm"])).float()
    xtr, ytr = x_all[tr], y_all[tr]
    model = FastLandmarkNet(width)
    model.mean_shape.copy_(ytr.mean(0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = len(xtr) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    t0 = time.time()
    log: dict = {"epochs_planned": epochs, "train_images": int(tr.sum()), "valid_images": int(va.sum()), "epochs": []}
    for ep in range(epochs):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(xtr)))
        tot = 0.0
        for k in range(steps_per_epoch):
            idx = perm[k * batch : (k + 1) * batch]
            xb, yb = xtr[idx], ytr[idx]
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb[flip] = xb[flip].flip(-1)
            yb[flip] = flip_landmarks(yb[flip])
            xb, yb = random_affine(xb, yb, rng)
            loss = (model(xb) - yb).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        v = evaluate_model(model, z, va)
        log["epochs"].append({"epoch": ep + 1, "train_l1": tot / steps_per_epoch, "valid_nme_mean": v["nme_mean"],
                              "seconds": round(time.time() - t0, 1)})
        print(json.dumps(log["epochs"][-1]), file=sys.stderr)
        if (time.time() - t0) / 60 > max_minutes and ep + 1 < epochs:
            log["stopped_early"] = f"time budget {max_minutes} min reached after epoch {ep + 1}"
            break
    log["train_seconds"] = round(time.time() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"width": width, "input_size": 48, "trained_on": "FER2013 train split, dlib 68-point targets (faces stage "
            "pre-aligned path)" + (", averaged with dlib on the mirrored image" if mirror_targets else ""), "epochs": len(log["epochs"]), "seed": seed,
            "valid_nme_mean": log["epochs"][-1]["valid_nme_mean"]}
    torch.save({"state_dict": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                "meta": meta}, out)
    log["weights"] = str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out)
    log["weights_bytes"] = out.stat().st_size
    return log


def evaluate_model(model, z: dict[str, np.ndarray], mask: np.ndarray) -> dict:
    """NME stats of `model` vs the dlib targets of the rows in `mask`."""
    from ferclean.faces.fastlm import predict_landmarks

    model.eval()
    imgs = list(z["images"][mask])
    pred = predict_landmarks(imgs, model)
    e = nme(pred, z["lm_dlib"][mask].astype(np.float64))
    return {"n": int(mask.sum()), "nme_mean": round(float(e.mean()), 5), "nme_median": round(float(np.median(e)), 5),
            "nme_p90": round(float(np.percentile(e, 90)), 5), "nme_p99": round(float(np.percentile(e, 99)), 5)}


def evaluate(weights: Path) -> dict:
    """Valid-split NME of the saved weights, overall and by the dlib target's detector; baselines."""
    from ferclean.faces.fastlm import load_model

    z = load_targets()
    va = z["split"] == "valid"
    model = load_model(str(weights))
    res = {"valid": evaluate_model(model, z, va)}
    for det in ("dlib", "full_frame"):
        res[f"valid_target_{det}"] = evaluate_model(model, z, va & (z["detector"] == det))
    tr = z["split"] == "train"
    mean_shape = z["lm"][tr].mean(0)
    e0 = nme(np.broadcast_to(mean_shape, z["lm"][va].shape), z["lm"][va].astype(np.float64))
    res["baseline_mean_shape_valid"] = {"nme_mean": round(float(e0.mean()), 5),
                                        "nme_p90": round(float(np.percentile(e0, 90)), 5)}
    iod = np.linalg.norm(z["lm"][va][:, 45] - z["lm"][va][:, 36], axis=1)
    res["iod_px_valid_median"] = round(float(np.median(iod)), 2)
    res["target_detector_share_valid"] = {d: round(float((z["detector"][va] == d).mean()), 4)
                                          for d in ("dlib", "full_frame")}
    return res


def dlib_flip_floor(procs: int = 2) -> dict:
    """NME of dlib on the mirrored valid images (mapped back) vs dlib on the originals: how much
    dlib disagrees with itself, a floor for any model distilled from it."""
    z = load_targets()
    va = np.flatnonzero(z["split"] == "valid")
    paths = [str(FER / z["paths"][i]) for i in va]
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    t0 = time.time()
    with Pool(procs) as pool:
        lm = np.concatenate(pool.map(_dlib_flipped_chunk, chunks))
    e = nme(lm, z["lm"][va].astype(np.float64))
    det = z["detector"][va]
    res = {"n": len(va), "seconds": round(time.time() - t0, 1)}
    subsets = (("all", np.ones(len(va), bool)), ("target_dlib", det == "dlib"), ("target_full_frame", det == "full_frame"))
    for name, m in subsets:
        res[name] = {"nme_mean": round(float(e[m].mean()), 5), "nme_median": round(float(np.median(e[m])), 5),
                     "nme_p90": round(float(np.percentile(e[m], 90)), 5)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="targets,train,eval")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--max-minutes", type=float, default=8.0)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on 2 cores shared with other jobs, 2 threads ran ~5x slower)")
    ap.add_argument("--mirror-targets", action="store_true",
                    help="train on the mean of dlib on the image and on its mirror (step mirror_targets first)")
    ap.add_argument("--out", type=Path, default=ROOT / "ferclean" / "faces" / "weights" / "fastlm.pt")
    args = ap.parse_args()
    if not (FER / "labels.csv").exists():
        sys.exit(f"FER2013 data not found at {FER}")
    steps = args.steps.split(",")
    if "targets" in steps:
        compute_targets()
    if "mirror_targets" in steps:
        compute_mirror_targets()
    RESULTS.mkdir(parents=True, exist_ok=True)
    res_path = RESULTS / "fastlm_eval.json"
    res = json.loads(res_path.read_text()) if res_path.exists() else {}
    if "train" in steps:
        res["train"] = train(args.epochs, args.max_minutes, args.width, args.batch, args.lr, args.seed, args.out,
                             args.threads, args.mirror_targets)
        res["train"]["args"] = {k: str(v) for k, v in vars(args).items()}
    if "eval" in steps:
        res["eval"] = evaluate(args.out)
        res["eval"]["weights_bytes"] = args.out.stat().st_size
    if "floor" in steps:
        res["dlib_flip_floor_valid"] = dlib_flip_floor()
    res["machine"] = f"{os.cpu_count()} CPU cores shared (load average {os.getloadavg()[0]:.1f})"
    res_path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
