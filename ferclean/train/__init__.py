"""Confidence-weighted training (SCN, ULC-AG, EAC) with K-fold cross-fitting.

Public API: `TrainConfig`, `run_train(store, run, config, progress=True) -> dict`,
`crossfit(...)`, `load_model(model_dir)`, `score(model, crops) -> (probs, alpha, sem_dist, embeddings)`.

The names are loaded on first use (PEP 562), so a process that needs only `ferclean.train.engine`
(a spawned fold worker) does not import the stage's store, sklearn and verdict modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, statically: type checkers and ferclean.code_graph (stage code versions) see them
    from ferclean.train.config import METHODS, TrainConfig
    from ferclean.train.model_io import LoadedModel, load_model, save_model, score
    from ferclean.train.stage import crossfit, run_train

_WHERE = {
    "METHODS": "config", "TrainConfig": "config",
    "LoadedModel": "model_io", "load_model": "model_io", "save_model": "model_io", "score": "model_io",
    "crossfit": "stage", "run_train": "stage",
}

__all__ = ["METHODS", "LoadedModel", "TrainConfig", "crossfit", "load_model", "run_train", "save_model", "score"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"ferclean.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'ferclean.train' has no attribute {name!r}")
