"""Saving, loading and applying a trained network (`OUT/model/`).

The folder's layout (file names, the AU view, the AU reference) belongs to
:class:`ferclean.model_dir.ModelDir`; this module (de)serialises the network and its metadata at
the paths ModelDir gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferclean.model_dir import ModelDir
from ferclean.train.config import TrainConfig
from ferclean.train.data import PREPROCESSING, decode_crops
from ferclean.train.engine import FitResult, predict
from ferclean.train.models import FERNet, build_model


@dataclass
class LoadedModel:
    """A model ready for `score`: network, metadata and inference constants."""

    net: FERNet
    meta: dict[str, Any]
    templates: torch.Tensor | None
    logit_scale: float

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def save_model(result: FitResult, cfg: TrainConfig, au_names: Sequence[str], model_dir: Path | ModelDir,
               neutral_au_reference: dict[str, float] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the network and its metadata into `model_dir`; returns the folder."""
    md = ModelDir(model_dir)
    md.path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    torch.save({"state_dict": state,
                "templates": None if result.templates is None else result.templates.detach().cpu(),
                "logit_scale": result.logit_scale}, md.network_path)
    meta = {
        "classes": list(cfg.classes),
        "au_names": list(au_names) if result.model.n_aus else [],
        "backbone": cfg.resolved_backbone(),
        "input_size": cfg.input_size,
        "width": cfg.width,
        "au_dim": cfg.au_dim,
        "gcn_channels": cfg.gcn_channels,
        "method": result.method,
        "channels": 1,
        "preprocessing": PREPROCESSING,
        "neutral_au_reference": neutral_au_reference,
        "logit_scale": result.logit_scale,
        **(extra or {}),
    }
    md.write_meta(meta)
    return md.path


def load_model(model_dir: str | Path | ModelDir, device: str = "cpu") -> LoadedModel:
    """Rebuild a saved model (no download; the state dict holds every weight)."""
    md = ModelDir(model_dir)
    meta = md.meta()
    blob = torch.load(md.network_path, map_location=device, weights_only=False)
    state = blob["state_dict"]
    a_bar = state.get("a_bar")
    net = build_model(meta["backbone"], len(meta["classes"]), a_bar, meta["input_size"], meta["width"],
                      meta["au_dim"], meta["gcn_channels"])
    net.load_state_dict(state)
    net.to(device).eval()
    return LoadedModel(net=net, meta=meta, templates=blob["templates"], logit_scale=float(blob["logit_scale"]))


def score(model: LoadedModel, crops: Sequence[bytes | np.ndarray | str | Path] | np.ndarray,
          batch_size: int = 512, tta_flip: bool = True
          ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:
    """Apply a loaded model to face crops (PNG bytes, arrays or paths; or an (N, S, S) uint8 array).

    Returns probs (N, C) in model.classes order, alpha (N,) or None, sem_dist (N, C) or None,
    embeddings (N, D) (backbone features, for duplicate/outlier search).
    """
    size = int(model.meta["input_size"])
    if isinstance(crops, np.ndarray) and crops.dtype == np.uint8 and crops.ndim == 3 and crops.shape[1:] == (size, size):
        images = crops
    else:
        images = decode_crops(list(crops), size)
    out = predict(model.net, images, model.meta["method"], model.templates, model.logit_scale,
                  batch_size=batch_size, tta_flip=tta_flip)
    return out["probs"], out["alpha"], out["sem_dist"], out["embeddings"]


def probs_in_classes(model_dir: str | Path, images: np.ndarray, classes: list[str]) -> np.ndarray:
    """(N, C) probabilities of a saved model (e.g. a warm start's init model) for `images` ((N, S, S) uint8 at
    its input size), columns in `classes` order matched by name (a class it does not know gets 0, rows
    renormalised)."""
    model = load_model(model_dir)
    probs = score(model, images)[0].astype(np.float64)
    own = list(model.classes)
    out = np.zeros((len(probs), len(classes)))
    for j, c in enumerate(classes):
        if c in own:
            out[:, j] = probs[:, own.index(c)]
    return out / np.clip(out.sum(axis=1, keepdims=True), 1e-12, None)
