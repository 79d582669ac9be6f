"""The face quality flags: the one list the faces stage raises and the verdict rule reads."""

from __future__ import annotations

#: quality flags a `faces` row can carry (ferclean.faces.quality.quality_flags raises them in this order)
QUALITY_FLAGS: tuple[str, ...] = ("tiny", "blurry", "extreme_pose", "multiple_faces", "full_frame")
