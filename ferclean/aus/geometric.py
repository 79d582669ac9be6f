"""Geometric action units from 68-point (iBUG/dlib) landmarks: pure numpy.

Pipeline (all arrays float64 internally, results float32):

1. :func:`normalise_landmarks` removes translation, in-plane rotation and scale: the midpoint of
   the two eye centres goes to the origin, the eye line becomes horizontal and the inter-ocular
   distance (IOD, eye centre to eye centre) becomes 1. Units below are IOD (``mouth_face`` is a
   ratio); y points down.
2. :func:`measure` computes FACS-motivated distances (:data:`MEASURES`), each averaged over the
   two face halves where the face has two.
3. A :class:`Reference` holds, per measure, the neutral value (median over neutral-labelled
   training faces, else over all training faces: OpenFace's "median of the person/collection"
   idea applied to a collection) and a unit (the robust standard deviation, 1.4826 * MAD, over
   all training faces, floored at :data:`MIN_SCALE`). It is fitted once on the training split
   and stored as JSON so a trained model can reuse it on a new collection.
   A *conditional* reference (the default of the aus stage) stands in for OpenFace's
   per-person neutral on stills: for :data:`CONDITIONAL_MEASURES` the neutral value is predicted
   per face by a ridge regression from the horizontal positions of rigid landmarks
   (:data:`RIGID_POINTS`, which expressions barely move), fitted on the neutral-labelled
   training faces with a fixed, strong penalty (:data:`RIDGE_ALPHA_PER_FACE`), so identity and head-pose differences in those measures are not read as
   movement; their unit is the robust SD of the residuals over all training faces.
4. :func:`au_scores`: each AU is a weighted mean of signed standardised deviations
   z_k = (m_k - neutral_k) / unit_k (neutral_k per face for a conditional reference; recipes
   in :data:`AU_RECIPES`, weights summing to 1).
5. Intensity = clip(score, 0, 5): one unit of intensity is one robust standard deviation of
   movement away from neutral, so 5 means "5 robust SDs", the FACS E level. Presence =
   intensity >= threshold (default 1.0, i.e. one robust SD, roughly FACS level A/B); AU25
   (lips part) is instead present when the inner-lip gap exceeds ``lips_part_iod`` (0.05 IOD),
   and AU45 (blink) when the eye aperture falls below ``blink_ratio`` (0.45) of its neutral value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ferclean.aus.names import AU_NAMES

#: dlib 68-point indices (subject's right = image left).
R_EYE, L_EYE = list(range(36, 42)), list(range(42, 48))

#: Smallest unit (IOD) a measure's robust SD may take, so a near-constant measure cannot
#: turn noise into intensity 5.
MIN_SCALE = 0.01

MEASURES: tuple[str, ...] = (
    "inner_brow",      # inner-brow height above the inner eye corner (AU01 +, AU04 -)
    "outer_brow",      # lateral-brow (points 18-19 / 24-25) height above the outer eye corner (AU02 +)
    "brow_slope",      # inner brow end above the brow's middle point: oblique brow (AU01 +, AU04 -)
    "brow_gap",        # horizontal distance between the inner brow ends: glabella width (AU04 -)
    "upper_lid",       # upper-lid height above the eye-corner line (AU05 +, AU07 -)
    "lower_lid",       # lower-lid height above the eye-corner line, usually < 0 (AU06/AU07 +)
    "eye_open",        # lid-to-lid aperture (AU05 +, AU07/AU45 -)
    "nose_wing",       # nostril-wing depth below the eye line (AU09 -)
    "nose_lip",        # nose base to upper-lip top (AU10/AU09 -)
    "nose_width",      # nostril-wing to nostril-wing (AU09/AU10 +: wings raised and widened)
    "corner_lift",     # lip-corner height above the inner-lip midline centre (AU12 +, AU15 -)
    "corner_lower",    # lower lip next to the corner (59 / 55) below the lip corner (AU15 -)
    "corner_depth",    # lip-corner depth below the nose base (AU12 -, AU15 +)
    "mouth_width",     # lip-corner to lip-corner (AU12/AU20 +, AU23 -)
    "mouth_face",      # horizontal mouth width / face width at ear level (jaw points 0-16), unitless (AU20 +)
    "corner_eye",      # lip corner to the outer eye corner, same side (AU12 -: oblique pull)
    "lip_gap",         # inner-lip opening (AU25 +)
    "jaw_drop",        # chin depth below the nose base (AU26 +)
    "lower_lip_drop",  # lower-lip bottom depth below the nose base (AU26 +)
    "chin_lip",        # lower-lip bottom to chin (AU17 -)
    "lip_thickness",   # visible red-lip height, upper + lower (AU23 -)
    "upper_lip",       # visible upper red-lip height (AU23 -)
)

#: Bumped whenever a measure's definition or the default reference changes (the stage's shard
#: keys include it with the recipes). 3: conditional reference (:data:`CONDITIONAL_MEASURES`).
#: 4: AU12 / AU15 weights re-selected on dlib+fastlm landmarks with the conditional
#: reference (benchmarks/results/aus.md, "Session 3: recipe re-selection").
#: 5: the conditional reference's ridge penalty is fixed (:data:`RIDGE_ALPHA_PER_FACE`) instead
#: of chosen by leave-one-out error (aus.md, "Session 3: conditional reference re-selection").
GEOMETRIC_VERSION = 5

#: Rigid landmarks for the conditional reference: eye corners, nose bridge, tip and base, and
#: the upper face contour (not brows, lids, mouth or lower jaw). Only their x coordinates in the
#: normalised frame are used: the vertical positions move more with expressions (cheek raise,
#: squint) on FER2013 (benchmarks/results/aus.md).
RIGID_POINTS: tuple[int, ...] = (0, 1, 2, 3, 13, 14, 15, 16, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)

#: Measures whose neutral value a conditional reference predicts per face (the others keep the
#: neutral median). Chosen greedily by mean prototype AUROC on FER2013 train rows only; the
#: conditional neutral of the remaining measures lowered it (it also removes expression, since
#: dlib's shape model couples the points).
CONDITIONAL_MEASURES: tuple[str, ...] = (
    "outer_brow", "brow_slope", "brow_gap", "lower_lid", "nose_lip", "corner_lift", "corner_depth",
    "mouth_width", "corner_eye", "jaw_drop", "lower_lip_drop",
)

#: Ridge penalty of the conditional reference per neutral face (penalty = this * number of
#: neutral faces, on standardised rigid coordinates): a direction of the rigid x coordinates is
#: shrunk by var / (var + 0.064), var its eigenvalue of the neutral faces' correlation matrix.
#: Chosen on FER2013 train rows with dlib+fastlm landmarks (penalty 10**2.5 for 4,932 neutral
#: faces): the leave-one-out penalty (0.03) predicts the neutral measures best but also removes
#: expression, which the rigid points still carry weakly (benchmarks/results/aus.md).
RIDGE_ALPHA_PER_FACE = 0.064

#: Ridge penalties tried when ``fit_reference(ridge_alpha=None)`` picks one by leave-one-out
#: error on the neutral faces (the default before :data:`GEOMETRIC_VERSION` 5).
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 4, 13))

#: AU -> ((measure, signed weight), ...); |weights| sum to 1 so a score is in robust SDs.

AU_RECIPES: dict[str, tuple[tuple[str, float], ...]] = {
    # inner brow raised, mostly as height above the eye, partly as the oblique (inner-end-up) shape
    "AU01": (("inner_brow", 0.75), ("brow_slope", 0.25)),
    "AU02": (("outer_brow", 1.0),),
    # corrugator: brows drawn together (glabella narrows) and lowered at the inner ends
    "AU04": (("brow_gap", -0.75), ("inner_brow", -0.25)),
    "AU05": (("upper_lid", 0.5), ("eye_open", 0.5)),
    "AU06": (("lower_lid", 0.5), ("corner_depth", -0.25), ("eye_open", -0.25)),  # eye narrowed from below
    # lower lid raised / aperture narrowed *without* the cheek raise of a smile (corners not pulled
    # up toward the eyes)
    "AU07": (("eye_open", -0.4), ("lower_lid", 0.3), ("corner_eye", 0.3)),
    "AU09": (("nose_lip", -0.4), ("nose_width", 0.3), ("inner_brow", -0.3)),  # also lowers inner brow
    "AU10": (("nose_lip", -0.6), ("nose_width", 0.4)),
    # oblique pull: corners pulled out (widening) and up (above the lip midline, toward the eyes)
    "AU12": (("corner_lift", 0.25), ("mouth_width", 0.45), ("corner_eye", -0.3)),
    "AU14": (("mouth_width", 0.5), ("lip_thickness", -0.25), ("lip_gap", -0.25)),
    # corners pulled down: below the inner-lip midline and toward the lower lip beside them
    "AU15": (("corner_lift", -0.7), ("corner_lower", -0.3)),
    "AU17": (("chin_lip", -0.5), ("lip_gap", -0.25), ("lip_thickness", 0.25)),
    # lips stretched sideways (relative to the face width, so yaw cancels), corners not raised
    "AU20": (("mouth_face", 0.5), ("corner_lift", -0.5)),
    # lips thinned (upper red lip: the lower one's inner contour moves with the jaw) and narrowed
    "AU23": (("upper_lip", -0.5), ("mouth_width", -0.5)),
    "AU25": (("lip_gap", 1.0),),
    # the lower lip rides on the mandible; the 68-point chin (8) is poorly placed on small crops
    "AU26": (("lower_lip_drop", 0.8), ("jaw_drop", 0.2)),
    "AU45": (("eye_open", -1.0),),
}


def as_points(landmarks: np.ndarray) -> np.ndarray:
    """(N, 136) flat x0,y0,x1,y1... or (N, 68, 2) -> (N, 68, 2) float64."""
    a = np.asarray(landmarks, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim == 2:
        if a.shape[1] != 136:
            raise ValueError(f"expected (N, 136) landmarks, got {a.shape}")
        a = a.reshape(-1, 68, 2)
    if a.shape[1:] != (68, 2):
        raise ValueError(f"expected (N, 68, 2) landmarks, got {a.shape}")
    return a


def normalise_landmarks(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translate, de-rotate and scale landmarks to IOD units.

    Args: landmarks (N, 68, 2) or (N, 136) in pixels.
    Returns: (points (N, 68, 2) in IOD units with the eye midpoint at (0, 0) and the eyes on
    y = 0, subject's right eye at x = -0.5; iod (N,) in input pixels). Rows with IOD < 1e-6 are NaN.
    """
    p = as_points(landmarks)
    re, le = p[:, R_EYE].mean(1), p[:, L_EYE].mean(1)
    d = le - re
    iod = np.hypot(d[:, 0], d[:, 1])
    ok = iod > 1e-6
    safe = np.where(ok, iod, 1.0)
    c, s = d[:, 0] / safe, d[:, 1] / safe
    v = (p - ((re + le) / 2)[:, None]) / safe[:, None, None]
    c, s = c[:, None], s[:, None]
    q = np.stack([c * v[..., 0] + s * v[..., 1], c * v[..., 1] - s * v[..., 0]], -1)  # rotates d onto +x
    q[~ok] = np.nan
    return q, iod


def measure(points: np.ndarray) -> np.ndarray:
    """FACS distances (:data:`MEASURES` order) from normalised points (N, 68, 2) -> (N, K)."""
    x, y = points[..., 0], points[..., 1]
    face_w = x[:, 16] - x[:, 0]

    def pair(a: float | np.ndarray, b: float | np.ndarray) -> np.ndarray:
        return (a + b) / 2

    m = {
        "inner_brow": pair(y[:, 39] - y[:, [20, 21]].mean(1), y[:, 42] - y[:, [22, 23]].mean(1)),
        "outer_brow": pair(y[:, 36] - y[:, [18, 19]].mean(1), y[:, 45] - y[:, [24, 25]].mean(1)),
        "brow_slope": pair(y[:, 19] - y[:, 21], y[:, 24] - y[:, 22]),
        "brow_gap": x[:, 22] - x[:, 21],
        "upper_lid": pair(pair(y[:, 36], y[:, 39]) - pair(y[:, 37], y[:, 38]),
                          pair(y[:, 42], y[:, 45]) - pair(y[:, 43], y[:, 44])),
        "lower_lid": pair(pair(y[:, 36], y[:, 39]) - pair(y[:, 40], y[:, 41]),
                          pair(y[:, 42], y[:, 45]) - pair(y[:, 46], y[:, 47])),
        "eye_open": pair(pair(y[:, 41] - y[:, 37], y[:, 40] - y[:, 38]),
                         pair(y[:, 47] - y[:, 43], y[:, 46] - y[:, 44])),
        "nose_wing": pair(y[:, 31], y[:, 35]),
        "nose_lip": y[:, 51] - y[:, 33],
        "nose_width": x[:, 35] - x[:, 31],
        "corner_lift": pair(y[:, 62], y[:, 66]) - pair(y[:, 48], y[:, 54]),
        "corner_lower": pair(y[:, 59] - y[:, 48], y[:, 55] - y[:, 54]),
        "corner_depth": pair(y[:, 48], y[:, 54]) - y[:, 33],
        "mouth_width": np.hypot(x[:, 54] - x[:, 48], y[:, 54] - y[:, 48]),
        "mouth_face": (x[:, 54] - x[:, 48]) / np.where(np.abs(face_w) > 1e-6, face_w, np.nan),
        "corner_eye": pair(np.hypot(x[:, 48] - x[:, 36], y[:, 48] - y[:, 36]),
                           np.hypot(x[:, 54] - x[:, 45], y[:, 54] - y[:, 45])),
        "lip_gap": (y[:, [65, 66, 67]] - y[:, [63, 62, 61]]).mean(1).clip(min=0),
        "jaw_drop": y[:, 8] - y[:, 33],
        "lower_lip_drop": y[:, 57] - y[:, 33],
        "chin_lip": y[:, 8] - y[:, 57],
        "lip_thickness": (y[:, 62] - y[:, 51]) + (y[:, 57] - y[:, 66]),
        "upper_lip": y[:, 62] - y[:, 51],
    }
    return np.stack([m[k] for k in MEASURES], 1)


@dataclass
class Reference:
    """Neutral value and unit per measure (IOD units), fitted on a training split.

    `source` is "conditional" (per-face neutral for some measures, see below), "neutral" (median
    of neutral-labelled faces), "collection" (median of all faces) or how it was obtained;
    `n_neutral_value` / `n_scale` count the faces used.

    `conditional` (None for a median reference) holds the ridge regression that predicts the
    neutral value of `conditional["measures"]` from the normalised x coordinates of
    `conditional["points"]`: neutral = intercept + ((x - feature_mean) / feature_scale) @ coef.T;
    for those measures `neutral` keeps the plain neutral median (informative only) and `scale`
    is the robust SD of the residuals.
    """

    measures: list[str]
    neutral: list[float]
    scale: list[float]
    source: str
    n_neutral_value: int
    n_scale: int
    conditional: dict | None = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(neutral (K,), scale (K,)) in :data:`MEASURES` order."""
        if list(self.measures) != list(MEASURES):
            raise ValueError(f"reference measures {self.measures} do not match {list(MEASURES)}")
        return np.asarray(self.neutral, np.float64), np.asarray(self.scale, np.float64)

    def neutral_values(self, points: np.ndarray | None = None, n: int | None = None) -> np.ndarray:
        """Per-face neutral values (N, K) for normalised `points` (N, 68, 2).

        A median reference needs no points (pass `n`, the number of faces); a conditional one
        raises ValueError without them.
        """
        neutral, _ = self.arrays()
        if points is None:
            if self.conditional is not None:
                raise ValueError("a conditional AU reference needs the faces' normalised landmarks")
            return np.broadcast_to(neutral, (n if n is not None else 1, len(neutral))).copy()
        out = np.tile(neutral, (len(points), 1))
        c = self.conditional
        if c is not None:
            unknown = set(c["measures"]) - set(MEASURES)
            if unknown:
                raise ValueError(f"conditional reference measures {sorted(unknown)} are not in {list(MEASURES)}")
            x = np.asarray(points, np.float64)[:, list(c["points"]), 0]
            xs = (x - np.asarray(c["feature_mean"])) / np.asarray(c["feature_scale"])
            pred = np.asarray(c["intercept"]) + xs @ np.asarray(c["coef"], np.float64).T
            out[:, [MEASURES.index(k) for k in c["measures"]]] = pred
        return out

    def to_json(self) -> str:
        return json.dumps({"kind": "ferclean.aus.geometric.Reference", **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Reference:
        d = json.loads(text)
        d.pop("kind", None)
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        return cls.from_json(Path(path).read_text())


def robust_sd(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """1.4826 * median absolute deviation, ignoring NaN."""
    med = np.nanmedian(a, axis=axis, keepdims=True)
    return 1.4826 * np.nanmedian(np.abs(a - med), axis=axis)


def ridge_loo(
    x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = RIDGE_ALPHAS,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Multi-output ridge regression with an unpenalised intercept; the penalty minimises the
    leave-one-out squared error summed over outputs (as scikit-learn's RidgeCV).

    Returns (coef (outputs, features), intercept (outputs,), alpha).
    """
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = x - xm, y - ym
    u, sv, vt = np.linalg.svd(xc, full_matrices=False)
    uty = u.T @ yc
    best: tuple[float, float] | None = None
    for a in alphas:
        d = sv**2 / (sv**2 + a)
        h = (u**2) @ d + 1.0 / len(x)
        loo = (yc - u @ (d[:, None] * uty)) / (1.0 - h)[:, None]
        err = float(np.mean(loo**2))
        if best is None or err < best[0]:
            best = (err, a)
    alpha = best[1]
    coef = (vt.T @ ((sv / (sv**2 + alpha))[:, None] * uty)).T
    return coef, ym - coef @ xm, float(alpha)


def fit_reference(
    measures: np.ndarray,
    neutral_mask: np.ndarray | None = None,
    min_neutral: int = 20,
    points: np.ndarray | None = None,
    ridge_alpha: float | None = RIDGE_ALPHA_PER_FACE,
) -> Reference:
    """Fit a :class:`Reference` from training-face measures (N, K).

    The neutral value is the median over rows where `neutral_mask` is true when there are at
    least `min_neutral` of them, else over all rows. The unit is the robust SD over all rows,
    floored at :data:`MIN_SCALE`. NaN rows are ignored.

    With `points` (the same faces' normalised landmarks (N, 68, 2)) and at least `min_neutral`
    neutral faces the reference is conditional: for :data:`CONDITIONAL_MEASURES` a ridge
    regression from the x coordinates of :data:`RIGID_POINTS`, fitted on the neutral faces with
    penalty `ridge_alpha` * (number of neutral faces) (None: the penalty in :data:`RIDGE_ALPHAS`
    with the least leave-one-out error summed over all measures, :func:`ridge_loo`), predicts each face's neutral value; its intercept is shifted so the neutral
    faces' median residual is 0, and the unit is the robust SD of the residuals over all rows.
    Without enough neutral faces it falls back to the collection median.
    """
    m = np.asarray(measures, np.float64)
    good = ~np.isnan(m).any(1)
    if points is not None:
        points = np.asarray(points, np.float64)
        if len(points) != len(m):
            raise ValueError(f"{len(points)} landmark sets for {len(m)} measure rows")
        good &= ~np.isnan(points[:, list(RIGID_POINTS), 0]).any(1)
    if not good.any():
        raise ValueError("no valid faces to fit an AU reference on")
    m = m[good]
    source, base, nm = "collection", m, None
    if neutral_mask is not None:
        nm = np.asarray(neutral_mask, bool)[good]
        if nm.sum() >= min_neutral:
            source, base = "neutral", m[nm]
    neutral = np.median(base, 0)
    scale = np.maximum(robust_sd(m, 0), MIN_SCALE)
    conditional = None
    if points is not None and source == "neutral":
        x = points[good][:, list(RIGID_POINTS), 0]
        mu, sd = x[nm].mean(0), x[nm].std(0)
        sd = np.where(sd > 1e-9, sd, 1.0)
        xs = (x - mu) / sd
        alphas = RIDGE_ALPHAS if ridge_alpha is None else (float(ridge_alpha) * int(nm.sum()),)
        coef, intercept, alpha = ridge_loo(xs[nm], m[nm], alphas)  # LOO alpha: chosen on all measures
        cols = [MEASURES.index(k) for k in CONDITIONAL_MEASURES]
        coef, intercept = coef[cols], intercept[cols]
        resid = m[:, cols] - (intercept + xs @ coef.T)
        intercept = intercept + np.median(resid[nm], 0)
        scale[cols] = np.maximum(robust_sd(resid, 0), MIN_SCALE)
        source = "conditional"
        conditional = {"points": list(RIGID_POINTS), "coordinate": "x", "measures": list(CONDITIONAL_MEASURES),
                       "feature_mean": mu.tolist(), "feature_scale": sd.tolist(), "coef": coef.tolist(),
                       "intercept": intercept.tolist(), "alpha": alpha}
    return Reference(list(MEASURES), neutral.tolist(), scale.tolist(), source, int(len(base)), int(len(m)),
                     conditional)


def standardise(measures: np.ndarray, ref: Reference, points: np.ndarray | None = None) -> np.ndarray:
    """z = (measures - neutral) / unit, (N, K); `points` (normalised, N x 68 x 2) are needed
    by a conditional reference."""
    m = np.asarray(measures, np.float64)
    _, scale = ref.arrays()
    return (m - ref.neutral_values(points, len(m))) / scale


def recipe_matrix(aus: tuple[str, ...] = AU_NAMES) -> np.ndarray:
    """(K, M) weights so that scores = z @ W (see :data:`AU_RECIPES`)."""
    w = np.zeros((len(MEASURES), len(aus)))
    for j, au in enumerate(aus):
        for name, weight in AU_RECIPES[au]:
            w[MEASURES.index(name), j] += weight
    return w


def au_scores(measures: np.ndarray, ref: Reference, aus: tuple[str, ...] = AU_NAMES,
              points: np.ndarray | None = None) -> np.ndarray:
    """Signed AU scores in robust SDs from neutral, (N, M) (see :func:`standardise`)."""
    return standardise(measures, ref, points) @ recipe_matrix(aus)


def geometric_aus(
    landmarks: np.ndarray,
    ref: Reference,
    presence_threshold: float = 1.0,
    lips_part_iod: float = 0.05,
    blink_ratio: float = 0.45,
    aus: tuple[str, ...] = AU_NAMES,
) -> tuple[np.ndarray, np.ndarray]:
    """Intensity (N, M) float32 in [0, 5] and presence (N, M) int8 for 68-point landmarks.

    Rows with degenerate landmarks (IOD ~ 0 or NaN) get NaN intensity and presence 0.
    """
    pts, _ = normalise_landmarks(landmarks)
    m = measure(pts)
    scores = au_scores(m, ref, aus, pts)
    inten = np.clip(scores, 0.0, 5.0)
    pres = inten >= presence_threshold
    neutral, _ = ref.arrays()
    if "AU25" in aus:
        pres[:, aus.index("AU25")] = m[:, MEASURES.index("lip_gap")] > lips_part_iod
    if "AU45" in aus:
        k = MEASURES.index("eye_open")
        pres[:, aus.index("AU45")] = m[:, k] < blink_ratio * neutral[k]
    bad = np.isnan(m).any(1)
    inten[bad] = np.nan
    pres[bad] = False
    return inten.astype(np.float32), pres.astype(np.int8)
