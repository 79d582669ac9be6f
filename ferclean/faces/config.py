"""Configuration of the faces stage (pydantic models with documented defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class QualityThresholds(BaseModel):
    """Thresholds that turn quality measurements into `quality_flags`.

    - `tiny`: face_px (sqrt of bbox width x height, original px) < `tiny_px`.
    - `blurry`: variance of the Laplacian of the aligned grayscale crop < `blur_min`.
    - `extreme_pose`: |yaw| > `max_abs_yaw_deg` or |pitch| > `max_abs_pitch_deg` (roll is undone
      by the alignment, so it is not flagged), or the 68-point fit cannot be trusted because the
      face is turned beyond what the frontal model fits: found by dlib's MMOD passes and one side
      of the fit on a flat area (side balance < `min_side_balance`; `ferclean.faces.turned`).
    - `multiple_faces`: more than one face in the image.
    - `full_frame`: no detection; the whole image was taken as the face box (pre-aligned mode, or
      the opt-in crop fallback of photos mode).
    """

    tiny_px: float = Field(24.0, ge=0, description="face size in original px below which a face is tiny")
    blur_min: float = Field(30.0, ge=0, description="Laplacian variance (crop grey levels^2) below which a crop is blurry")
    max_abs_yaw_deg: float = Field(45.0, gt=0, description="degrees")
    max_abs_pitch_deg: float = Field(35.0, gt=0, description="degrees")
    min_side_balance: float | None = Field(
        0.15, ge=0, le=1, description="faces found by the MMOD passes: extreme_pose when the side balance of the "
        "68-point fit (ferclean.faces.turned.side_balance: eye and jaw-contour detail, weaker side / stronger side, "
        "multiplied) is below this (a profile's collapsed frontal fit puts one side on the cheek or background); "
        "None = off. Chosen on the rendered mesh and the face-recall development set, seed 1 "
        "(benchmarks/results/face_turned.md)")


class FacesConfig(BaseModel):
    """Settings of `run_faces`.

    Modes: `photos` (no detection -> a `no_face` reject), `prealigned` (crop datasets such as
    FER2013: no detection -> the whole image is the face box, `detector = 'full_frame'`), `auto`
    (per image: prealigned when max(width, height) <= `prealigned_max_side`, else photos).
    """

    backend: Literal["dlib", "dlib_cnn", "pyfeat"] = Field(
        "dlib", description="dlib: HOG detector (fast, default); dlib_cnn: dlib MMOD CNN detector "
        "(finds more faces, ~1-4 s per photo on CPU); pyfeat: py-feat's detector, only if its weights are on disk")
    mode: Literal["auto", "photos", "prealigned"] = "auto"
    prealigned_max_side: int = Field(128, ge=1, description="px; auto mode treats images up to this size as pre-aligned crops")
    prealigned_detect: bool = Field(
        True, description="run the detector on pre-aligned images (False: always full_frame, ~2x faster on FER crops)")
    landmarks: Literal["dlib", "fastlm", "dlib+fastlm"] = Field(
        "dlib+fastlm", description="landmarks of pre-aligned images. dlib: detector + dlib's 68 points per image "
        "(full frame when nothing is detected); fastlm: no detection, a tiny CNN distilled from dlib, batched per "
        "shard (detector = 'fastlm'; the fast setting for crop datasets); dlib+fastlm (default): dlib as above, "
        "then the primary face's points are averaged with fastlm's on the image and its mirror (weights 1/3 "
        "each: less landmark noise, prototype-AU AUROC +0.02 on FER2013, ~4 % more time than dlib alone). "
        "Photos always use the detector + dlib")
    fastlm_flip: bool = Field(
        False, description="landmarks='fastlm': also run the network on the mirrored image and average (2x the "
        "network's cost; slightly steadier points). dlib+fastlm always does this")
    second_chance: bool = Field(
        True, description="photos mode: when the detector finds nothing, try again before rejecting as no_face, cheapest "
        "first: on a copy padded by pad_fraction of its side, rotated by rotate_degrees, with dlib's MMOD CNN (mmod: "
        "upright, rotated by mmod_rotate_degrees, larger), and, for an image that looks like one face crop, the full "
        "frame (crop_fallback); see ferclean.faces.recall")
    pad_fraction: float = Field(1 / 3, ge=0.05, le=1.0, description="border of the padded copy, as a share of the longer side")
    padded_min_score: float = Field(
        0.25, description="a face found on the padded copy with a lower HOG score does not end the search: the later "
        "passes run, and the weak face is kept only when none of them finds a face")
    rotate_degrees: tuple[float, ...] = Field(
        (-30.0, 30.0, -15.0, 15.0, -45.0, 45.0), description="degrees the padded copy is rotated by for the rotated "
        "passes, tried in this order until one finds a face (HOG covers ~±15 on its own)")
    rotated_min_score: float = Field(
        0.25, description="HOG score a face found on a rotated copy must reach (rotated textures give weak detections, "
        "0.0-0.22 on the development check set)")
    mmod: bool = Field(True, description="second chances with dlib's MMOD CNN detector (~0.5-1 s per pass on a CPU; up "
                       "to 1 + len(mmod_rotate_degrees) + 1 passes per image nothing else found)")
    mmod_max_side: int = Field(400, ge=64, description="px; the padded copy is scaled down to this for MMOD (its cost grows with the area)")
    mmod_rotate_degrees: tuple[float, ...] = Field(
        (-30.0, 30.0), description="degrees the padded copy is rotated by for MMOD passes after the upright one "
        "(path mmod_rotated; tilted faces HOG's rotated passes miss; each ~1x the first MMOD pass's cost)")
    mmod_large_side: int | None = Field(
        600, ge=64, description="px; when MMOD at mmod_max_side finds nothing on a padded copy larger than that, MMOD "
        "again on the copy scaled to this side (path mmod_large; small faces in large frames; ~2x the first MMOD "
        "pass's cost); None = off")
    crop_fallback: bool = Field(
        False, description="photos mode, last chance (opt-in): take the whole image as the face (detector full_frame) "
        "when it looks like one face crop: aspect <= crop_max_aspect, shorter side >= crop_min_side, 68-point fit on "
        "the whole frame shaped like a face (residual <= crop_max_fit_residual). Off by default: dlib's fit stays "
        "face-shaped on non-faces too, so these cues let most square non-faces through "
        "(benchmarks/results/face_recall.md)")
    crop_min_side: int = Field(16, ge=1, description="px; smaller images never get a full_frame face (any mode)")
    crop_max_aspect: float = Field(1.5, ge=1.0, description="longer / shorter side of an image the crop fallback accepts")
    crop_max_fit_residual: float = Field(
        0.35, gt=0, description="RMS distance of the whole-frame 68-point fit from the mean face shape, in half eye distances")
    detect_min_side: int = Field(144, ge=1, description="px; smaller images are upscaled so their longer side is this before detection and landmarks")
    detect_max_side: int = Field(1280, ge=64, description="px; larger images are downscaled to this longer side for detection and landmarks")
    upsample: int = Field(0, ge=0, le=2, description="dlib detector pyramid upsampling steps")
    score_threshold: float = Field(0.0, description="dlib HOG adjust_threshold / minimum detector score")
    max_faces: int = Field(32, ge=1, description="keep at most this many faces per image (largest first)")
    crop_size: int = Field(112, ge=16, le=1024, description="px, side of the aligned square crop")
    prealigned_crop_size: int | None = Field(
        None, ge=16, le=1024, description="px, side of the aligned crop of pre-aligned images (full_frame / "
        "fastlm rows); None = crop_size. 64 keeps a 48 px FER crop at its own resolution (its eyes are ~20 px "
        "apart, as in the template at 64 px) and is ~3x cheaper to warp, measure and encode than 112")
    crop_png: Literal["stored", "deflate"] = Field(
        "stored", description="PNG flavour of crop_png: stored (no deflate, ~10 us per 64 px crop; the Parquet "
        "file zstd-compresses the column) or deflate (OpenCV's encoder, ~60-100 us). Same pixels either way, so "
        "it is not part of the shard keys")
    fastlm_runtime: Literal["auto", "onnxruntime", "torch", "torch-bf16"] = Field(
        "auto", description="what runs the fastlm network: onnxruntime (packaged ONNX export, float32; workers "
        "start without importing torch), torch (float32), torch-bf16 (autocast, ~1.7x faster than torch on CPUs "
        "with native bf16, landmarks within ~0.1 px), or auto = onnxruntime if installed, else torch-bf16 where "
        "native, else torch")
    quality: QualityThresholds = Field(default_factory=QualityThresholds)
    shard_size: int = Field(1024, ge=1, description="images per shard (unit of resume)")
    workers: int = Field(2, ge=1, description="worker processes (not part of the shard keys)")
    contact_sheet_n: int = Field(64, ge=0, description="random aligned crops in faces_contact_sheet.png")
    seed: int = Field(0, description="seed for the contact sheet sample")

    def crop_size_for(self, mode: str) -> int:
        """Crop side in px for an image analysed in `mode` ('photos' or 'prealigned')."""
        if mode == "prealigned" and self.prealigned_crop_size is not None:
            return self.prealigned_crop_size
        return self.crop_size

    def fingerprint_dict(self) -> dict:
        """The settings that change the output (used for shard keys): all but workers/sheet."""
        d = self.model_dump(mode="json", exclude={"workers", "contact_sheet_n", "seed", "crop_png"})
        if d["prealigned_crop_size"] is None:  # keeps the shard keys of stores written before it existed
            del d["prealigned_crop_size"]
        if not d["fastlm_flip"]:  # keeps the shard keys of stores written before it existed
            del d["fastlm_flip"]
        if d["landmarks"] == "dlib":  # keeps the shard keys of stores written before dlib+fastlm existed
            del d["landmarks"]
            del d["fastlm_runtime"]
        else:  # new weights -> new shard keys
            from ferclean.faces.fastlm_files import resolve_runtime, weights_digest

            d["fastlm_weights"] = weights_digest()
            d["fastlm_runtime"] = resolve_runtime(d["fastlm_runtime"])
        return d
