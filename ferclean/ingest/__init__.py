"""Ingest: image folders, CSV manifests, FER2013 pixel CSVs (+ FER+ votes) -> `samples`."""

from ferclean.ingest.config import IngestConfig
from ferclean.ingest.core import detect_format, run_ingest
from ferclean.ingest.sources import SourceError, TooManyRejects

__all__ = ["IngestConfig", "SourceError", "TooManyRejects", "detect_format", "run_ingest"]
