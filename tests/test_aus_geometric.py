"""Geometric AU maths on synthetic 68-point landmark sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ferclean.aus.geometric import (
    CONDITIONAL_MEASURES, MEASURES, RIDGE_ALPHA_PER_FACE, RIDGE_ALPHAS, RIGID_POINTS, Reference, fit_reference,
    geometric_aus, measure, normalise_landmarks, ridge_loo, standardise,
)
from ferclean.aus.names import AU_NAMES


def template() -> np.ndarray:
    """A plausible neutral 68-point face (eyes at y=0, IOD 1), built from simple shapes."""
    p = np.zeros((68, 2))
    jaw = np.linspace(np.pi, 0, 17)
    p[0:17] = np.c_[0.95 * np.cos(jaw), 0.1 + 1.0 * np.sin(jaw) ** 0.8]
    p[17:22] = np.c_[np.linspace(-0.85, -0.18, 5), [-0.22, -0.30, -0.32, -0.31, -0.28]]
    p[22:27] = np.c_[-p[17:22][::-1, 0], p[17:22][::-1, 1]]
    p[27:31] = np.c_[[0, 0, 0, 0], [0.05, 0.2, 0.35, 0.5]]
    p[31:36] = np.c_[[-0.22, -0.11, 0, 0.11, 0.22], [0.62, 0.66, 0.68, 0.66, 0.62]]

    def eye(cx: float) -> np.ndarray:
        return np.c_[cx + np.array([-0.2, -0.08, 0.08, 0.2, 0.08, -0.08]),
                     [0.0, -0.065, -0.065, 0.0, 0.065, 0.065]]

    p[36:42], p[42:48] = eye(-0.5), eye(0.5)
    p[48:60] = np.c_[[-0.4, -0.25, -0.1, 0, 0.1, 0.25, 0.4, 0.25, 0.1, 0, -0.1, -0.25],
                     [1.0, 0.93, 0.9, 0.92, 0.9, 0.93, 1.0, 1.1, 1.14, 1.15, 1.14, 1.1]]
    p[60:68] = np.c_[[-0.36, -0.1, 0, 0.1, 0.36, 0.1, 0, -0.1], [1.0, 0.99, 0.99, 0.99, 1.0, 1.0, 1.0, 1.0]]
    return p


def jitter(n: int, scale: float = 0.02, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return template()[None] + rng.normal(0, scale, (n, 68, 2))


@pytest.fixture(scope="module")
def ref() -> Reference:
    pts, _ = normalise_landmarks(jitter(200))
    return fit_reference(measure(pts))


def au(inten: np.ndarray, name: str) -> np.ndarray:
    return inten[:, AU_NAMES.index(name)]


def test_normalisation_removes_translation_rotation_and_scale():
    base = template()
    th = np.deg2rad(25)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    moved = (base @ rot.T) * 73.0 + np.array([120.0, -40.0])
    a, iod_a = normalise_landmarks(base[None])
    b, iod_b = normalise_landmarks(moved.reshape(1, 136))
    assert np.allclose(a, b, atol=1e-9)
    assert iod_b[0] == pytest.approx(73.0 * iod_a[0])
    assert np.allclose(b[0, 36:42].mean(0), [-0.5, 0], atol=1e-9)
    assert np.allclose(b[0, 42:48].mean(0), [0.5, 0], atol=1e-9)


def test_degenerate_landmarks_give_nan_and_absent():
    bad = np.zeros((1, 68, 2))
    ref = Reference(list(MEASURES), [0.0] * len(MEASURES), [0.1] * len(MEASURES), "test", 1, 1)
    inten, pres = geometric_aus(bad, ref)
    assert np.isnan(inten).all() and (pres == 0).all()


def test_neutral_face_scores_near_zero(ref):
    inten, pres = geometric_aus(template()[None], ref)
    assert inten.max() < 1.0
    assert pres.sum() == 0


def test_raising_lip_corners_raises_au12_not_au15(ref):
    smile = template().copy()
    smile[[48, 54, 60, 64], 1] -= 0.08
    smile[48, 0] -= 0.04
    smile[54, 0] += 0.04
    inten, pres = geometric_aus(np.stack([template(), smile]), ref)
    assert au(inten, "AU12")[1] > au(inten, "AU12")[0] + 1.0
    assert pres[1, AU_NAMES.index("AU12")] == 1
    assert au(inten, "AU15")[1] == 0


def test_lowering_lip_corners_raises_au15(ref):
    frown = template().copy()
    frown[[48, 54, 60, 64], 1] += 0.08
    inten, _ = geometric_aus(frown[None], ref)
    assert au(inten, "AU15")[0] > 1.0 and au(inten, "AU12")[0] == 0


def test_opening_the_jaw_raises_au25_and_au26(ref):
    open_ = template().copy()
    lower = [5, 6, 7, 8, 9, 10, 11, 55, 56, 57, 58, 59, 65, 66, 67]
    open_[lower, 1] += 0.25
    open_[[48, 54, 60, 64], 1] += 0.125  # the lip corners sit half-way down an open mouth
    inten, pres = geometric_aus(np.stack([template(), open_]), ref)
    for name in ("AU25", "AU26"):
        assert au(inten, name)[1] > au(inten, name)[0] + 1.0
        assert pres[1, AU_NAMES.index(name)] == 1
    assert pres[0, AU_NAMES.index("AU25")] == 0
    assert au(inten, "AU12")[1] == 0  # an open mouth is not a smile


def test_raised_brows_raise_au01_au02_and_lowered_brows_au04(ref):
    up, down = template().copy(), template().copy()
    up[17:27, 1] -= 0.1
    down[17:27, 1] += 0.08
    down[21, 0] += 0.05
    down[22, 0] -= 0.05
    inten, _ = geometric_aus(np.stack([up, down]), ref)
    assert au(inten, "AU01")[0] > 1 and au(inten, "AU02")[0] > 1 and au(inten, "AU04")[0] == 0
    assert au(inten, "AU04")[1] > 1 and au(inten, "AU01")[1] == 0


def test_closed_eyes_blink_and_wide_eyes_au05(ref):
    closed, wide = template().copy(), template().copy()
    closed[[37, 38, 43, 44], 1] = 0.0
    closed[[40, 41, 46, 47], 1] = 0.0
    wide[[37, 38, 43, 44], 1] -= 0.05
    inten, pres = geometric_aus(np.stack([closed, wide]), ref)
    assert pres[0, AU_NAMES.index("AU45")] == 1 and pres[1, AU_NAMES.index("AU45")] == 0
    assert au(inten, "AU05")[1] > 1


def test_intensity_range_and_rotation_invariance(ref):
    rng = np.random.default_rng(1)
    faces = jitter(50, 0.08, seed=2)
    th = rng.uniform(-0.5, 0.5, 50)
    rots = np.stack([np.c_[np.cos(th), -np.sin(th)], np.c_[np.sin(th), np.cos(th)]], 1)
    turned = np.einsum("nij,nkj->nki", rots, faces) * 40 + 100
    a, _ = geometric_aus(faces, ref)
    b, _ = geometric_aus(turned, ref)
    assert np.allclose(a, b, atol=1e-4)
    assert a.min() >= 0 and a.max() <= 5 and a.dtype == np.float32


def test_reference_prefers_neutral_median_and_round_trips(tmp_path):
    pts, _ = normalise_landmarks(jitter(60))
    m = measure(pts)
    mask = np.zeros(60, bool)
    mask[:25] = True
    r = fit_reference(m, mask, min_neutral=20)
    assert r.source == "neutral" and r.n_neutral_value == 25 and r.n_scale == 60
    assert np.allclose(r.neutral, np.median(m[:25], 0))
    assert fit_reference(m, mask, min_neutral=30).source == "collection"
    r2 = Reference.load(r.save(tmp_path / "ref.json"))
    assert r2 == r
    assert min(r.scale) >= 0.01


def test_brows_drawn_together_raise_au04_without_lowering(ref):
    knit = template().copy()
    knit[[20, 21], 0] += 0.06  # inner brow ends pulled toward the midline, same height
    knit[[22, 23], 0] -= 0.06
    inten, _ = geometric_aus(np.stack([template(), knit]), ref)
    assert au(inten, "AU04")[1] > au(inten, "AU04")[0] + 1.0
    assert au(inten, "AU01")[1] < 0.5


def test_oblique_inner_brow_raise_is_au01_not_au02(ref):
    sad = template().copy()
    sad[[20, 21, 22, 23], 1] -= 0.06  # only the inner brow ends rise
    inten, _ = geometric_aus(np.stack([template(), sad]), ref)
    assert au(inten, "AU01")[1] > 1.0
    assert au(inten, "AU02")[1] < 0.5


def test_outer_brow_raise_is_au02(ref):
    up = template().copy()
    up[[17, 18, 19, 24, 25, 26], 1] -= 0.06
    inten, _ = geometric_aus(np.stack([template(), up]), ref)
    assert au(inten, "AU02")[1] > 1.0


def test_lip_stretch_raises_au20_but_a_smile_does_not(ref):
    stretch, smile = template().copy(), template().copy()
    stretch[[48, 60], 0] -= 0.06
    stretch[[54, 64], 0] += 0.06
    smile[[48, 60], 0] -= 0.06
    smile[[54, 64], 0] += 0.06
    smile[[48, 54, 60, 64], 1] -= 0.08
    inten, _ = geometric_aus(np.stack([stretch, smile]), ref)
    assert au(inten, "AU20")[0] > 1.0
    assert au(inten, "AU20")[1] < au(inten, "AU20")[0] - 1.0


def test_thinner_upper_lip_raises_au23(ref):
    tight = template().copy()
    tight[[49, 50, 51, 52, 53], 1] += 0.04  # upper red lip thinner
    tight[[48, 60], 0] += 0.02
    tight[[54, 64], 0] -= 0.02
    inten, _ = geometric_aus(np.stack([template(), tight]), ref)
    assert au(inten, "AU23")[1] > au(inten, "AU23")[0] + 1.0


def test_lid_tightening_is_au07_only_without_a_smile(ref):
    tight, smile = template().copy(), template().copy()
    for f in (tight, smile):
        f[[40, 41, 46, 47], 1] -= 0.03  # lower lids raised, aperture narrowed
    smile[[48, 54, 60, 64], 1] -= 0.1  # lip corners pulled up toward the eyes
    smile[48, 0] -= 0.05
    smile[54, 0] += 0.05
    inten, _ = geometric_aus(np.stack([tight, smile]), ref)
    assert au(inten, "AU07")[0] > 1.0
    assert au(inten, "AU07")[1] < au(inten, "AU07")[0]
    assert au(inten, "AU12")[1] > 1.0


def test_lip_corners_pulled_toward_the_lower_lip_raise_au15(ref):
    down = template().copy()
    down[[48, 54], 1] += 0.05  # outer corners drop toward the lower lip, inner lips unchanged
    inten, _ = geometric_aus(np.stack([template(), down]), ref)
    assert au(inten, "AU15")[1] > au(inten, "AU15")[0] + 1.0


def wide_faces(n: int, seed: int = 0, neutral: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Faces with an identity factor w: a wider face (contour, nose, mouth corners all scale with
    w horizontally). Returns (landmarks (n, 68, 2), w (n,))."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, n)
    p = template()[None] + rng.normal(0, 0.004, (n, 68, 2))
    wide = list(range(0, 17)) + list(range(31, 36)) + [48, 54, 60, 64]
    p[:, wide, 0] *= 1 + 0.15 * w[:, None]
    return p, w


def test_conditional_reference_removes_an_identity_effect_the_median_keeps(tmp_path):
    lm, w = wide_faces(300)
    pts, _ = normalise_landmarks(lm)
    m = measure(pts)
    mask = np.zeros(300, bool)
    mask[:150] = True
    med = fit_reference(m, mask, min_neutral=20)
    cond = fit_reference(m, mask, min_neutral=20, points=pts)
    assert med.conditional is None and cond.source == "conditional" and cond.n_neutral_value == 150
    assert cond.conditional["points"] == list(RIGID_POINTS)
    k = MEASURES.index("mouth_width")
    assert "mouth_width" in CONDITIONAL_MEASURES
    # the median reference reads a wide face's wide mouth as a smile (AU12 / AU20 movement) ...
    z_med = standardise(m, med)[:, k]
    assert np.corrcoef(z_med, w)[0, 1] > 0.9
    # ... the conditional one predicts it from the wide face and leaves noise only
    lm2, w2 = wide_faces(200, seed=1)
    pts2, _ = normalise_landmarks(lm2)
    z_cond = standardise(measure(pts2), cond, pts2)[:, k]
    assert abs(np.corrcoef(z_cond, w2)[0, 1]) < 0.3
    m2 = measure(pts2)
    dev_cond = np.abs(m2 - cond.neutral_values(pts2))[:, k]  # IOD units
    dev_med = np.abs(m2 - med.neutral_values(n=len(m2)))[:, k]
    assert dev_cond.mean() < 0.3 * dev_med.mean()
    # a real movement on top of any identity is still seen
    smile = lm2.copy()
    smile[:, 48, 0] -= 0.08
    smile[:, 54, 0] += 0.08
    sp, _ = normalise_landmarks(smile)
    assert (standardise(measure(sp), cond, sp)[:, k] - z_cond).min() > 2
    # JSON round trip keeps the regression; it needs the landmarks to score
    r2 = Reference.load(cond.save(tmp_path / "ref.json"))
    assert r2 == cond
    np.testing.assert_allclose(standardise(measure(pts2), r2, pts2), standardise(measure(pts2), cond, pts2))
    with pytest.raises(ValueError, match="needs the faces' normalised landmarks"):
        standardise(measure(pts2), r2)
    a, _ = geometric_aus(lm2, r2)
    assert np.isfinite(a).all()


def test_conditional_reference_falls_back_without_enough_neutral_faces():
    lm, _ = wide_faces(60)
    pts, _ = normalise_landmarks(lm)
    mask = np.zeros(60, bool)
    mask[:10] = True
    r = fit_reference(measure(pts), mask, min_neutral=20, points=pts)
    assert r.source == "collection" and r.conditional is None
    r = fit_reference(measure(pts), None, points=pts)
    assert r.source == "collection" and r.conditional is None


def test_old_reference_json_still_loads_as_a_median_reference(tmp_path):
    pts, _ = normalise_landmarks(jitter(40))
    r = fit_reference(measure(pts))
    d = json.loads(r.to_json())
    d.pop("conditional")
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = Reference.load(tmp_path / "old.json")
    assert old.conditional is None and old == r
    d["measures"] = d["measures"][:-1]
    (tmp_path / "older.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="do not match"):
        Reference.load(tmp_path / "older.json").arrays()


def test_ridge_loo_matches_scikit_learn():
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 6))
    y = x @ rng.normal(size=(6, 3)) + rng.normal(0, 2.0, (80, 3)) + 5
    alphas = (0.1, 1.0, 10.0, 100.0)
    coef, intercept, alpha = ridge_loo(x, y, alphas)
    sk = RidgeCV(alphas=alphas).fit(x, y)
    assert alpha == pytest.approx(sk.alpha_)
    np.testing.assert_allclose(coef, sk.coef_, atol=1e-8)
    np.testing.assert_allclose(intercept, sk.intercept_, atol=1e-8)


def test_conditional_reference_penalty_is_fixed_per_neutral_face_unless_loo_is_asked():
    lm, w = wide_faces(300)
    pts, _ = normalise_landmarks(lm)
    m = measure(pts)
    mask = np.zeros(300, bool)
    mask[:150] = True
    fixed = fit_reference(m, mask, min_neutral=20, points=pts)
    assert fixed.conditional["alpha"] == pytest.approx(RIDGE_ALPHA_PER_FACE * 150)
    loo = fit_reference(m, mask, min_neutral=20, points=pts, ridge_alpha=None)
    assert loo.conditional["alpha"] in RIDGE_ALPHAS
    strong = fit_reference(m, mask, min_neutral=20, points=pts, ridge_alpha=100.0)
    assert strong.conditional["alpha"] == pytest.approx(100.0 * 150)
    # a stronger penalty shrinks the regression toward the plain neutral median
    norms = [np.linalg.norm(r.conditional["coef"]) for r in (fixed, strong)]
    assert norms[1] < 0.5 * norms[0]
    # the default penalty still removes the identity effect (cf. the test above)
    k = MEASURES.index("mouth_width")
    lm2, w2 = wide_faces(200, seed=1)
    pts2, _ = normalise_landmarks(lm2)
    assert abs(np.corrcoef(standardise(measure(pts2), fixed, pts2)[:, k], w2)[0, 1]) < 0.3
