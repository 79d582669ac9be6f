"""Prefect flows over the ferclean library: `curate` and `relabel_collection` (see docs/scaling.md)."""
