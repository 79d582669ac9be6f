"""Ingest: image folders, CSV manifests, FER2013 pixel CSVs (+ FER+ votes) -> `samples`."""

from ferclean.ingest.config import IngestConfig
from ferclean.ingest.core import detect_format, run_ingest
from ferclean.ingest.sources import SourceError

__all__ = ["IngestConfig", "SourceError", "detect_format", "run_ingest"]
