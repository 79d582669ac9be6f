"""Action-unit names and the `aus` table's column names (OpenFace 2.0 naming)."""

from __future__ import annotations

#: AUs whose intensity (`AUxx_r`, 0-5) and presence (`AUxx_c`, 0/1) every backend writes.
AU_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45",
)

#: OpenFace 2.0 outputs AU28 presence only (no intensity); nullable in the table.
AU28_C = "AU28_c"

#: Every AU with a presence column (`AUxx_c`), AU28 included, in AU order: the pseudo-AU set of training.
PRESENCE_AUS: tuple[str, ...] = tuple(sorted((*AU_NAMES, "AU28")))

FACS_NAMES: dict[str, str] = {
    "AU01": "inner brow raiser", "AU02": "outer brow raiser", "AU04": "brow lowerer",
    "AU05": "upper lid raiser", "AU06": "cheek raiser", "AU07": "lid tightener",
    "AU09": "nose wrinkler", "AU10": "upper lip raiser", "AU12": "lip corner puller",
    "AU14": "dimpler", "AU15": "lip corner depressor", "AU17": "chin raiser",
    "AU20": "lip stretcher", "AU23": "lip tightener", "AU25": "lips part",
    "AU26": "jaw drop", "AU28": "lip suck", "AU45": "blink",
}


def intensity_columns(aus: tuple[str, ...] = AU_NAMES) -> list[str]:
    """`AUxx_r` column names in AU order."""
    return [f"{a}_r" for a in aus]


def presence_columns(aus: tuple[str, ...] = AU_NAMES) -> list[str]:
    """`AUxx_c` column names in AU order."""
    return [f"{a}_c" for a in aus]
