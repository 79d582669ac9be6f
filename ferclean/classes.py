"""Canonical expression classes and label normalisation.

The canonical set is lower-case: neutral, happy, sad, surprise, fear, disgust, angry, contempt.
A run may use a subset; the order used for probability vectors is recorded in `runs.config`.
"""

from __future__ import annotations

from collections.abc import Sequence

CANONICAL_CLASSES: tuple[str, ...] = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "angry",
    "contempt",
)

#: FER2013's integer codes in its `emotion` column.
FER2013_CODES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: The seven classes FER2013 uses, in canonical order (the default class list for FER data).
FER7: tuple[str, ...] = tuple(c for c in CANONICAL_CLASSES if c != "contempt")

#: Documented synonyms (lower-cased, stripped) -> canonical name.
SYNONYMS: dict[str, str] = {
    "neutrality": "neutral",
    "calm": "neutral",
    "happiness": "happy",
    "joy": "happy",
    "smile": "happy",
    "sadness": "sad",
    "unhappy": "sad",
    "surprised": "surprise",
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "disgusted": "disgust",
    "anger": "angry",
    "angry": "angry",
    "mad": "angry",
    "contemptuous": "contempt",
    "contempt": "contempt",
}

#: FER+ vote columns -> canonical class (the remaining columns `unknown` and `NF` are not classes).
FERPLUS_VOTE_COLUMNS: dict[str, str] = {
    "neutral": "neutral",
    "happiness": "happy",
    "surprise": "surprise",
    "sadness": "sad",
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
    "contempt": "contempt",
}


def normalize_label(raw: object, classes: Sequence[str] = CANONICAL_CLASSES) -> str | None:
    """Map a raw label to its canonical name.

    Returns None for an empty/missing label. Raises ValueError for a label that is neither a
    canonical class nor a documented synonym, or that is not in `classes`.
    """
    if raw is None:
        return None
    text = str(raw).strip().lower().replace("-", "_")
    if text in ("", "nan", "none", "null"):
        return None
    name = text if text in CANONICAL_CLASSES else SYNONYMS.get(text)
    if name is None:
        raise ValueError(f"unknown label {raw!r}")
    if name not in classes:
        raise ValueError(f"label {raw!r} ({name}) is not in the configured classes {list(classes)}")
    return name


def parse_class_list(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Parse a class list given as a comma-separated string or a sequence; validate every name."""
    if spec is None:
        return CANONICAL_CLASSES
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        name = normalize_label(item)
        if name is None:
            continue
        if name in out:
            raise ValueError(f"class {name!r} is listed twice")
        out.append(name)
    if len(out) < 2:
        raise ValueError("a class list needs at least two classes")
    return tuple(out)
