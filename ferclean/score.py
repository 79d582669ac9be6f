"""The `score` stage of relabel-collection: apply a trained model to a collection, no training."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ferclean.model_dir import ModelDir
from ferclean.noise import RelabelConfig
from ferclean.relabel import score_collection
from ferclean.store import Store


class ScoreConfig(BaseModel):
    """Settings of the `score` stage of relabel-collection: apply a trained model, no training."""

    model_dir: str = Field(description="folder of a trained model (a curate run's OUT/model)")
    collection: str | None = Field(None, description="score only this samples.collection (default: all)")
    relabel: RelabelConfig = Field(
        default_factory=RelabelConfig, description="the verdict rule (thresholds); filled from the config file's "
        "`relabel:` section")
    batch_size: int = Field(8192, ge=1, description="samples a score shard reads, scores and writes as one part "
                            "(the flows map the shards on their task runner; memory is flat in the collection's size "
                            "beyond 4 bytes a row for the domain-shift guard's median)")
    threads: int | None = Field(1, ge=1, description="torch threads for inference (None = torch's default). One "
                                "thread was 2.8x cheaper in CPU time than two on a shared 2-core machine")
    infer_batch: int = Field(128, ge=1, description="images per forward pass")
    embedding_sample: int = Field(20_000, ge=1, description="no longer used: the domain-shift guard's embedding "
                                  "spread is exact over every row (kept so older config files still validate)")


def run_score(store: Store, run: Any, config: ScoreConfig, progress: bool = True) -> dict:
    """Score samples with the model in `config.model_dir` and write predictions + verdicts
    (:func:`ferclean.relabel.score_collection` with the stage signature)."""
    return score_collection(store, run, ModelDir(config.model_dir).require(), config.relabel,
                            collection=config.collection, progress=progress, batch_size=config.batch_size,
                            threads=config.threads, infer_batch=config.infer_batch)
