"""The ingest stop rule: a run whose input is (mostly) unusable stops at once, with one line that
says why and what to do, instead of failing stages later with an unrelated error."""

from __future__ import annotations

from collections import Counter

#: What to do about the dominant reject reason.
FIXES: dict[str, str] = {
    "path_escapes_root": "pass --root with the folder that holds every image (absolute manifest paths "
                         "must lie inside it; relative ones are read from it)",
    "file_missing": "image paths are read relative to the manifest's folder, or to --root when given: "
                    "check the paths or pass --root",
    "unknown_label": "check the label spellings, or pass --classes with the classes the collection uses "
                     "(see ferclean/classes.py for accepted synonyms)",
    "malformed_row": "check the CSV: its header, delimiter, split names and the number of fields per row",
    "not_an_image": "the files are not images ferclean can read; check the source folder",
    "truncated_image": "the image files are cut short; copy them again",
    "empty_file": "the image files are empty; copy them again",
    "unreadable_file": "the files cannot be read; check their permissions",
    "too_many_pixels": "the images exceed --max-pixels; raise it if they are genuine",
    "duplicate_sample_id": "the manifest repeats sample ids; make them unique",
}


def stop_message(n_input: int, n_samples: int, reasons: Counter[str], examples: dict[str, str],
                 max_reject_share: float) -> str | None:
    """None when the run may go on; else the one-line message that stops it.

    Stops when no input row became a sample, or when the rejected share exceeds
    `max_reject_share` (1.0: only the first case).
    """
    rejected = sum(reasons.values())
    if n_input == 0:
        return "ingest stopped: the source holds no input rows (an empty folder or a manifest with only a header)"
    share = rejected / n_input
    if n_samples > 0 and share <= max_reject_share:
        return None
    reason, count = reasons.most_common(1)[0] if reasons else ("none", 0)
    head = (f"ingest stopped: none of {n_input:,} input rows is usable" if n_samples == 0 else
            f"ingest stopped: {rejected:,} of {n_input:,} input rows rejected ({share:.0%}, more than "
            f"max_reject_share {max_reject_share:.0%})")
    others = ", ".join(f"{r} {c:,}" for r, c in reasons.most_common()[1:4])
    example = examples.get(reason, "")
    fix = FIXES.get(reason, "see the rejects table: ferclean query OUT \"select reason_code, message from rejects\"")
    return (f"{head}; {count:,} x {reason}" + (f" (also {others})" if others else "")
            + (f", e.g. {example}" if example else "") + f". Fix: {fix}.")
