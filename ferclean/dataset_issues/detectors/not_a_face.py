"""not_a_face: :func:`ferclean.dataset_issues.nonface.nonface_score` >= `nonface_threshold`, from a
blank image, no detection, quality flags, embedding distance and the crop's face-likeness."""

from __future__ import annotations

import numpy as np

from ferclean.dataset_issues.detectors.base import IssueContext, IssueManager
from ferclean.dataset_issues.issues import sample_issue_rows
from ferclean.dataset_issues.nonface import blank_evidence, nonface_score


class NotAFace(IssueManager):
    name = "not_a_face"
    issue_types = ("not_a_face",)
    needs = ("face_space", "embedding_stats")

    def find(self, ctx: IssueContext) -> list[dict]:
        cfg, sig = ctx.cfg, ctx.sig
        fs = ctx.face_space  # first: it settles the detection evidence of rows no detector looked at
        blank = blank_evidence(sig.pixel_std, cfg.blank_std_lo, cfg.blank_std_hi)
        quality = sig.quality
        stats = ctx.embedding_stats
        emb_far = stats.far if stats is not None else np.full(ctx.n, np.nan)
        nf = nonface_score(blank, sig.no_detection, quality, emb_far,
                           cfg.w_no_detection, cfg.w_quality, cfg.w_embedding, fs["appearance"], cfg.w_appearance)
        flagged = np.flatnonzero(nf >= cfg.nonface_threshold)

        def comp(x: np.ndarray, i: int) -> float | None:
            return None if np.isnan(x[i]) else round(float(x[i]), 4)

        return sample_issue_rows(
            "not_a_face", ctx.samples.id_list(flagged), nf[flagged].tolist(),
            [{"blank": comp(blank, i), "no_detection": comp(sig.no_detection, i), "quality": comp(quality, i),
              "embedding": comp(emb_far, i), "appearance": comp(fs["appearance"], i), "dffs": comp(fs["dffs"], i),
              "dffs_image": comp(fs["dffs_image"], i),
              "hog_best": comp(fs["hog"], i), "pixel_std": comp(sig.pixel_std, i)} for i in flagged])
