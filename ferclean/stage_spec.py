"""What a pipeline stage is, for the registry (ferclean.pipeline), the stage cache and the flows.

A stage is a library function `run(store, run, config, progress=True) -> dict` with its pydantic
config class, the tables (or `OUT/<folder>/`) it reads and writes, and, for an image stage or the score
stage, a `shard_plan(store, config, run_id) -> ShardWork | None` that the flows map per shard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from ferclean.shards import Shard, ShardFn


@dataclass(frozen=True)
class ShardWork:
    """What the flows map over for a sharded stage: `fn(store, shard, job)` returns `out_table`'s part."""

    out_table: str
    fn: ShardFn
    job: Any
    shards: list[Shard]


@dataclass(frozen=True)
class StageSpec:
    """A pipeline stage.

    `inputs`/`outputs` name tables under `OUT/tables/` or, when they end in `/`, folders under
    `OUT/` (e.g. `model/`); they only drive the cache fingerprint, the stage decides what it reads.
    `config_cls` None: the stage takes no config.
    """

    name: str
    run: Callable[..., dict]
    config_cls: type[BaseModel] | None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    shard_plan: Callable[[Any, Any, str], ShardWork | None] | None = None
