"""Confidence-weighted training (SCN, ULC-AG) with K-fold cross-fitting.

Public API: `TrainConfig`, `run_train(store, run, config, progress=True) -> dict`,
`crossfit(...)`, `load_model(model_dir)`, `score(model, crops) -> (probs, alpha, sem_dist, embeddings)`.
"""

from ferclean.train.config import METHODS, TrainConfig
from ferclean.train.model_io import LoadedModel, load_model, save_model, score
from ferclean.train.stage import crossfit, run_train

__all__ = ["METHODS", "LoadedModel", "TrainConfig", "crossfit", "load_model", "run_train", "save_model", "score"]
