"""Pseudo action units per face (stage `aus`): geometric (68 landmarks), OpenFace CSV, py-feat.

Public API: :func:`run_aus`, :class:`AusConfig`, :func:`geometric_aus`, :class:`Reference`,
:func:`fit_reference`, :data:`AU_NAMES`.
"""

from ferclean.aus.geometric import Reference, fit_reference, geometric_aus, measure, normalise_landmarks
from ferclean.aus.names import AU_NAMES, intensity_columns, presence_columns
from ferclean.aus.stage import AusConfig, fit_reference_from_store, run_aus

__all__ = [
    "AU_NAMES", "AusConfig", "Reference", "fit_reference", "fit_reference_from_store", "geometric_aus",
    "intensity_columns", "measure", "normalise_landmarks", "presence_columns", "run_aus",
]
