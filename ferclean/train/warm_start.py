"""Warm start: initialise a network from an earlier run's model (`train.init_model`, `curate --init-model`).

Every cross-fitted fold and the final model start from the same saved weights instead of a random
initialisation. The saved model must have the same backbone, input size and width (else a one-line
ValueError); its classifier rows are matched to the new run's classes by name, and a class the
saved model does not know keeps its fresh initialisation. Tensors whose shape differs (e.g. the AU
branch of a model trained with another AU list) are left fresh too; the AU graph buffer `a_bar`
always comes from the new run. The folder's layout is :class:`ferclean.model_dir.ModelDir`'s.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ferclean.model_dir import ModelDir

CLASSIFIER_KEYS = ("classifier.weight", "classifier.bias")
RUN_OWN_KEYS = ("a_bar",)  # the new run's AU graph, never the init model's


@dataclass(frozen=True)
class InitModel:
    """An earlier run's weights and metadata, and the fingerprint that names them."""

    path: str
    meta: dict[str, Any]
    state: dict[str, torch.Tensor]
    fingerprint: str


def model_fingerprint(model_dir: str | Path | ModelDir) -> str:
    """sha256 (16 hex) of the network file and model.json: names the init model in `runs` and model.json."""
    md = ModelDir(model_dir).require()
    h = hashlib.sha256()
    for p in (md.network_path, md.meta_path):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def _load(path: str, mtime: float) -> InitModel:  # mtime: a rewritten model is read again
    md = ModelDir(path).require()
    blob = torch.load(md.network_path, map_location="cpu", weights_only=False)
    return InitModel(str(md.path), md.meta(), blob["state_dict"], model_fingerprint(md))


_cached = lru_cache(maxsize=2)(_load)


def load_init_model(path: str | Path) -> InitModel:
    """The saved model at `path` (cached per file version); FileNotFoundError when there is none."""
    md = ModelDir(path).require()
    return _cached(str(md.path.resolve()), md.network_path.stat().st_mtime)


def check_compatible(meta: dict[str, Any], backbone: str, input_size: int, width: int) -> None:
    """ValueError (one line) unless the saved model has this backbone, input size and (cnn) width."""
    want = {"backbone": backbone, "input_size": input_size}
    if backbone == "cnn":
        want["width"] = width
    bad = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    if bad:
        diff = ", ".join(f"{k} {a} vs {b}" for k, (a, b) in bad.items())
        raise ValueError(f"init model {meta.get('_path', '')} does not fit this run ({diff}; saved vs configured)")


def warm_state(fresh: dict[str, torch.Tensor], saved: dict[str, torch.Tensor], saved_classes: list[str],
               classes: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The state dict to load: `fresh` with every same-name, same-shape tensor of `saved`, classifier rows
    matched by class name. Returns (state, counts of copied / fresh tensors and matched classes)."""
    out = dict(fresh)
    copied = kept = 0
    for k, v in fresh.items():
        if k in RUN_OWN_KEYS or k in CLASSIFIER_KEYS:
            continue
        if k in saved and saved[k].shape == v.shape:
            out[k] = saved[k].to(v.dtype).clone()
            copied += 1
        else:
            kept += 1
    pos = {c: i for i, c in enumerate(saved_classes)}
    matched = [(i, pos[c]) for i, c in enumerate(classes) if c in pos]
    for k in CLASSIFIER_KEYS:
        if k not in fresh or k not in saved or saved[k].shape[1:] != fresh[k].shape[1:]:
            continue
        t = fresh[k].clone()
        for i, j in matched:
            t[i] = saved[k][j].to(t.dtype)
        out[k] = t
    return out, {"copied": copied, "fresh": kept, "classes_matched": len(matched), "classes": len(classes)}


def apply_init_model(net: torch.nn.Module, init_path: str, classes: list[str], backbone: str, input_size: int,
                     width: int) -> dict[str, int]:
    """Load an earlier run's weights into `net` (in place); returns what was copied."""
    init = load_init_model(init_path)
    check_compatible({**init.meta, "_path": init.path}, backbone, input_size, width)
    state, info = warm_state(net.state_dict(), init.state, list(init.meta["classes"]), list(classes))
    net.load_state_dict(state)
    return info

