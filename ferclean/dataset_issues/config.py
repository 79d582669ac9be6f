"""Configuration of the dataset-issues stage (pydantic, documented defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class DatasetIssuesConfig(BaseModel):
    """Settings of :func:`ferclean.dataset_issues.run_dataset_issues`.

    Thresholds were chosen on FER2013 (benchmarks/results/dataset_issues.md): among nearest-
    neighbour pairs at pHash distance 2 / 4 / 6 / 8, 99.5 / 97 / 77 / 35 % have a pixel
    correlation > 0.8 (the same photo), so 4 keeps near duplicates and few look-alikes.
    """

    hash_source: Literal["auto", "image", "crop"] = Field(
        "image",
        description="what the pHash is computed on: the image file (default; the Hamming <= 4 threshold "
        "was validated on files: 97 % of such pairs are the same photo), the primary aligned crop of the "
        "faces table, or auto = the crop when the sample has a face row, else the file. On FER2013 the "
        "crop hashes joined 4,722 samples into near-duplicate clusters vs 2,789 exact copies, unvalidated",
    )
    max_hamming: int = Field(4, ge=0, le=16, description="pHash Hamming distance (of 64 bits) for a near duplicate")
    mirror: bool = Field(True, description="also match horizontally mirrored copies (pHash of the flipped image)")
    hash_batch: int = Field(4096, ge=1, description="images decoded and hashed per batch")

    use_model: bool = Field(True, description="use model embeddings when OUT/model (or model_dir) exists")
    model_dir: str | None = Field(None, description="trained model folder; None = OUT/model")
    embed_batch: int = Field(512, ge=1, description="crops per model.score call")
    tasks_in_flight: int | None = Field(
        None, ge=1, description="on a task runner (--task-runner dask): per-image tasks (a faces part, a chunk of "
        "hash_batch image files) submitted or waiting to be merged at a time, which bounds the stage's memory (a "
        "part's signals and embeddings each); None = twice the runner's worker threads")
    embed_duplicates: bool = Field(
        False, description="also join near duplicates by embedding similarity. Off by default: on the whole "
        "FER2013 train split, with the CPU-sized model, it grew the near-duplicate clusters from 676 (pHash) "
        "to 3,129 covering 8,829 samples, mostly unrelated faces, and those would be dropped by relabel"
    )
    embed_cosine_min: float = Field(
        0.995, ge=0, le=1, description="cosine similarity of centred embeddings for a near duplicate; pairs must "
        "also be mutual nearest neighbours (with a small FER model, 0.1 % of unrelated pairs exceed 0.98)"
    )
    embed_max_n: int = Field(
        200_000, ge=0, description="embedding near-duplicate search is blocked all-pairs (O(N^2) time, "
        "O(N * block) memory); it is skipped above this many samples"
    )
    outlier_z: float = Field(
        4.0, gt=0, description="robust z (median/MAD within the labelled class) of the cosine distance to "
        "the class centroid above which a sample is an outlier"
    )

    blank_std_lo: float = Field(6.0, ge=0, description="grey-level std (0-255) at or below which an image is blank")
    blank_std_hi: float = Field(14.0, ge=0, description="std at which the blank evidence falls to 0 (linear between)")
    nonface_threshold: float = Field(0.6, ge=0, le=1, description="not_a_face score at or above which a sample is flagged")
    w_no_detection: float = Field(0.4, ge=0, description="weight: the face detector fell back to full_frame / no face row")
    w_quality: float = Field(0.2, ge=0, description="weight: fraction of quality flags tiny/blurry/extreme_pose raised")
    w_embedding: float = Field(
        0.1, ge=0, description="weight: far from every class centroid in embedding space (a tie-breaker: on "
        "FER2013 at 0.4 it flagged 1,193 undetected crops, nearly all atypical faces; outliers are reported "
        "as their own issue type)")
    face_space: bool = Field(
        True, description="score how face-like the crops no detector confirmed are (distance from a PCA face "
        "space fitted on detected crops + dlib HOG on rotated copies of the image; ferclean.dataset_issues.face_space)")
    detect_unchecked: bool = Field(
        True, description="rows whose faces came without detection (landmarks: fastlm) get dlib's HOG test first "
        "(~2 ms per image on the 144 px upscale), so that not-a-face evidence starts from a failed detection "
        "as on the dlib path; without it they only get the rotated check of the least face-like 10 %")
    face_space_k: int = Field(25, ge=1, description="principal components of the face space")
    face_space_side: int = Field(24, ge=8, le=64, description="px; crops are compared at this size")
    face_space_fit_n: int = Field(5000, ge=50, description="crops (at most) the face space is fitted on")
    hog_check_fraction: float = Field(
        0.1, ge=0, le=1, description="share of the undetected crops, the least face-like by DFFS, that get the "
        "rotated HOG check (~10 ms each)")
    nonface_top_fraction: float = Field(
        0.01, ge=0, le=0.5, description="appearance evidence is 1 for this share of the undetected crops, the least "
        "face-like of the HOG-checked ones by the three cues' mean rank (0 below twice it); with w_no_detection + "
        "w_appearance = threshold, about that share of the undetected rows is flagged")
    w_appearance: float = Field(0.2, ge=0, description="weight: the crop looks unlike a face (see face_space)")
