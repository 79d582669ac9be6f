"""Second chances before an image of a photo collection becomes `no_face`.

dlib's HOG detector needs margin around a face, a near-frontal, near-upright pose and a face of at
least ~80 px: tight crops, tilted or turned heads and small faces in large frames are missed (4.3 %
of a real web collection, all faces). When the first detection finds nothing, :func:`find_faces`
tries, cheapest first (each path is the `detector` value of the faces it finds):

1. `<backend>_padded`: the image padded by a border of `pad_fraction` (a third) of its longer side,
   filled with the image's median grey, so a tight crop has the margin the detector wants. A face
   scoring under `padded_min_score` does not end the search: it is kept when no later pass finds a
   face, or when a later pass finds one on the same spot (its HOG box is kept: dlib's 68-point
   predictor is trained on HOG boxes);
2. `<backend>_rotated`: the padded image rotated by each of `rotate_degrees` (-30, 30, -15, 15,
   -45, 45: roll the HOG detector does not cover; faces scoring under `rotated_min_score` are
   ignored, since rotated textures give weak detections; the landmarks are fitted in the rotated
   image and mapped back);
3. `mmod`: dlib's CNN (MMOD) detector on the padded image (scaled to at most `mmod_max_side`),
   which also finds turned (profile) and partly covered faces, at ~100x the HOG's cost;
   `mmod_rotated`: the same on the padded copy rotated by each of `mmod_rotate_degrees`;
   `mmod_large`: the padded copy scaled to `mmod_large_side` instead (only when the first MMOD
   pass saw it scaled down: faces that were too small there);
4. `full_frame` (opt-in, `crop_fallback`): for an image that looks like a single face crop
   (:func:`looks_like_face_crop`: aspect, size, and how face-like the 68-point fit on the whole
   frame is), the whole image. Off by default: dlib's shape predictor returns a face-shaped fit on
   textures and landscapes too (residual 0.07-0.2 on the benchmark's non-faces, 0.2-0.6 on the
   faces nothing detected), so these cues cannot keep non-faces out.

Measured on benchmarks/bench_face_recall.py's check sets (346 faces, 56 non-faces each; results
in benchmarks/results/face_recall*.md): see the README for the numbers; the settings of passes
1-3 were chosen on development sets (seeds 1, 2), not on the reported set (seed 0).

Everything runs in a *view*: an image plus the 2x3 affine that maps working-image px to view px,
so detections and landmarks found in a view map back exactly (:func:`to_work`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from ferclean.faces.backends import Detection, FaceBackend
from ferclean.faces.config import FacesConfig
from ferclean.faces.geometry import apply_affine
from ferclean.faces.quality import to_gray

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


@dataclass(frozen=True)
class View:
    """`image` = the working image mapped by `to_view` (2x3, working px -> view px)."""

    image: np.ndarray
    to_view: np.ndarray

    def to_work(self, points: np.ndarray) -> np.ndarray:
        """(n, 2) view px -> working-image px."""
        return to_work(self.to_view, points)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2x3 affine `a` after `b` (x -> a(b(x)))."""
    a3 = np.vstack([a, [0.0, 0.0, 1.0]])
    b3 = np.vstack([b, [0.0, 0.0, 1.0]])
    return (a3 @ b3)[:2]


def to_work(to_view: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (n, 2) view px back with the inverse of `to_view`."""
    return apply_affine(points, cv2.invertAffineTransform(np.asarray(to_view, np.float64)))


def box_to_work(to_view: np.ndarray, bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The axis-aligned box (x, y, w, h) around a view box's four corners mapped back."""
    x, y, w, h = bbox
    c = to_work(to_view, np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]], np.float64))
    lo, hi = c.min(0), c.max(0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])


def padded_view(image: np.ndarray, fraction: float, max_side: int) -> View:
    """`image` with a border of `fraction` x its longer side (median grey), scaled to <= max_side."""
    h, w = image.shape[:2]
    b = max(1, round(fraction * max(h, w)))
    fill = float(np.median(to_gray(image)))
    value = fill if image.ndim == 2 else (fill, fill, fill)
    out = cv2.copyMakeBorder(image, b, b, b, b, cv2.BORDER_CONSTANT, value=value)
    m = np.array([[1.0, 0.0, b], [0.0, 1.0, b]])
    return scaled_view(View(out, m), max_side)


def scaled_view(view: View, max_side: int) -> View:
    """`view` scaled down so its longer side is at most `max_side` (unchanged when it is)."""
    h, w = view.image.shape[:2]
    if max(h, w) <= max_side:
        return view
    f = max_side / max(h, w)
    img = cv2.resize(view.image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return View(img, _compose(np.array([[f, 0.0, 0.0], [0.0, f, 0.0]]), view.to_view))


def rotated_view(view: View, degrees: float) -> View:
    """`view` rotated by `degrees` (counter-clockwise in the image) about its centre, canvas expanded."""
    h, w = view.image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = round(h * s + w * c), round(h * c + w * s)
    m[0, 2] += nw / 2.0 - w / 2.0
    m[1, 2] += nh / 2.0 - h / 2.0
    out = cv2.warpAffine(view.image, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return View(out, _compose(m, view.to_view))


#: mean iBUG-68 shape (x0, y0, ...) of upright frontal faces, eye centres at (-1, 0) and (1, 0): dlib's
#: points on 1,124 FER2013 training crops with one HOG detection (FER+ "not a face" votes = 0)
MEAN_SHAPE = np.array([
    -2.235, 0.062, -2.210, 0.647, -2.136, 1.228, -2.015, 1.794, -1.802, 2.320, -1.471, 2.782, -1.046, 3.141,
    -0.551, 3.385, 0.013, 3.445, 0.575, 3.386, 1.070, 3.142, 1.497, 2.785, 1.831, 2.323, 2.048, 1.795, 2.169,
    1.223, 2.240, 0.638, 2.263, 0.048, -1.831, -0.430, -1.546, -0.669, -1.158, -0.737, -0.760, -0.682, -0.385,
    -0.530, 0.367, -0.538, 0.749, -0.689, 1.151, -0.743, 1.542, -0.673, 1.830, -0.434, -0.003, -0.063, -0.003,
    0.322, -0.004, 0.703, -0.005, 1.093, -0.448, 1.361, -0.235, 1.440, -0.001, 1.505, 0.229, 1.441, 0.444, 1.363,
    -1.392, 0.004, -1.146, -0.141, -0.845, -0.137, -0.589, 0.054, -0.865, 0.111, -1.162, 0.108, 0.587, 0.053,
    0.845, -0.139, 1.146, -0.140, 1.391, 0.005, 1.164, 0.108, 0.868, 0.114, -0.846, 2.148, -0.553, 1.969, -0.231,
    1.884, 0.000, 1.941, 0.236, 1.884, 0.560, 1.970, 0.859, 2.149, 0.574, 2.461, 0.257, 2.599, 0.001, 2.624,
    -0.250, 2.599, -0.566, 2.460, -0.722, 2.157, -0.232, 2.079, 0.001, 2.100, 0.239, 2.079, 0.732, 2.158, 0.243,
    2.306, -0.001, 2.333, -0.237, 2.306,
]).reshape(68, 2)


def fit_residual(lm68: np.ndarray, reference: np.ndarray) -> float:
    """RMS distance between `lm68` and `reference` after the best similarity, in half eye distances."""
    from ferclean.faces.geometry import similarity_transform

    m = similarity_transform(reference, np.asarray(lm68, np.float64))
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale <= 1e-9:
        return float("inf")
    d = apply_affine(reference, m) - lm68
    return float(np.sqrt((d**2).sum(1).mean()) / scale)


def looks_like_face_crop(image: np.ndarray, lm68: np.ndarray, config: FacesConfig) -> tuple[bool, str]:
    """Whether an undetected image is plausibly one face filling the frame; (ok, why not).

    Aspect (longer / shorter side <= crop_max_aspect), size (shorter side >= crop_min_side px) and
    the 68-point fit on the whole frame (`lm68`, working px): its shape close to a face's
    (fit_residual <= crop_max_fit_residual) and its eyes spanning a plausible share of the width.
    """
    h, w = image.shape[:2]
    if min(h, w) < config.crop_min_side:
        return False, f"smaller than {config.crop_min_side} px"
    if max(h, w) / min(h, w) > config.crop_max_aspect:
        return False, f"aspect {max(h, w) / min(h, w):.2f} > {config.crop_max_aspect}"
    r = fit_residual(lm68, MEAN_SHAPE)
    if r > config.crop_max_fit_residual:
        return False, f"landmark fit residual {r:.2f} > {config.crop_max_fit_residual}"
    eyes = np.linalg.norm(lm68[42:48].mean(0) - lm68[36:42].mean(0)) / w
    if not 0.15 <= eyes <= 0.7:
        return False, f"eye distance {eyes:.2f} of the width is not a face crop's"
    return True, ""



def _mmod_views(padded: View, config: FacesConfig) -> Iterator[tuple[str, View]]:
    """(name, view) of the MMOD passes, cheapest first: the padded copy at mmod_max_side, rotated
    by each of mmod_rotate_degrees, then at mmod_large_side (only when the padded copy is larger
    than mmod_max_side, i.e. the first pass saw it scaled down)."""
    small = scaled_view(padded, config.mmod_max_side)
    yield "mmod", small
    for deg in config.mmod_rotate_degrees:
        yield f"mmod_rotated({deg:g})", scaled_view(rotated_view(padded, deg), config.mmod_max_side)
    if config.mmod_large_side is not None and max(padded.image.shape[:2]) > config.mmod_max_side:
        yield "mmod_large", scaled_view(padded, config.mmod_large_side)


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes (0 when either is empty)."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


Found = tuple[list[Detection], str, View]


def _confirmed(found: Found, weak: Found, min_iou: float = 0.3) -> Found:
    """`weak` (a weak padded-copy face) when a box of `found` overlaps one of its boxes (IoU >= min_iou,
    working px): the later pass confirms it, and the HOG box is the one dlib's 68-point predictor
    was trained on. Otherwise `found`."""
    if weak[0]:
        mine = [box_to_work(weak[2].to_view, d.bbox) for d in weak[0]]
        theirs = [box_to_work(found[2].to_view, d.bbox) for d in found[0]]
        if any(box_iou(a, b) >= min_iou for a in mine for b in theirs):
            return weak
    return found


def _strong(dets: list[Detection], min_score: float) -> list[Detection]:
    """The detections whose score reaches `min_score` (scoreless ones are kept)."""
    return [d for d in dets if d.score is None or d.score >= min_score]


def find_faces(
    work: np.ndarray,
    backend: FaceBackend,
    config: FacesConfig,
    mmod: Callable[[], FaceBackend] | None = None,
    tried: list[str] | None = None,
) -> Found:
    """Detections (in the returned view's px) and the path that found them; [] when none did.

    `mmod` returns dlib's CNN detector (loaded on first use). `tried` (optional) receives the
    names of the paths tried, in order.
    """
    tried = tried if tried is not None else []
    base = View(work, IDENTITY)
    tried.append(backend.name)
    dets = backend.detect(work)
    if dets or not config.second_chance:
        return dets, backend.name, base
    padded = padded_view(work, config.pad_fraction, config.detect_max_side)
    tried.append(f"{backend.name}_padded")
    dets = backend.detect(padded.image)
    if _strong(dets, config.padded_min_score):
        return dets, f"{backend.name}_padded", padded
    # a weak face here does not end the search; it is kept if nothing else finds a face, or a later pass's overlaps it
    weak = (dets, f"{backend.name}_padded", padded) if dets else ([], "", base)
    for deg in config.rotate_degrees:
        view = rotated_view(padded, deg)
        tried.append(f"{backend.name}_rotated({deg:g})")
        dets = _strong(backend.detect(view.image), config.rotated_min_score)
        if dets:
            return _confirmed((dets, f"{backend.name}_rotated", view), weak)
    if config.mmod and mmod is not None and backend.name != "dlib_cnn":
        for name, view in _mmod_views(padded, config):
            tried.append(name)
            dets = mmod().detect(view.image)
            if dets:
                return _confirmed((dets, name.split("(")[0], view), weak)
    return weak
