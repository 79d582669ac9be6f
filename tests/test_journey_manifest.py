"""The data engineer's manifest journey, run as a person runs it: the CLI as a subprocess on a fresh
output folder, with a manifest of absolute paths (as `find /data -name '*.png'` writes them) and
odd label spellings.

- with `--root` every row is ingested, the sample ids are the paths below the root;
- without `--root` the run stops at once: exit code 2, one `error:` line naming `--root`, a
  failed `runs` row with the same message, and no samples written;
- `--json` prints the end-of-run summary for scripts, the plain summary names the next commands.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_png

from ferclean.store import Store

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "FERCLEAN_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([sys.executable, "-m", "ferclean.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def absolute_manifest(tmp_path: Path) -> tuple[Path, Path]:
    """images/ under a data folder; the manifest lives elsewhere and lists absolute paths."""
    data = tmp_path / "data"
    labels = ["HAPPINESS", "anger", "Sad", "happiness", "ANGRY", "neutral"]
    lines = ["image_path,label"]
    for i, lab in enumerate(labels):
        p = write_png(data / "images" / f"img{i}.png", (48, 48), seed=i)
        lines.append(f"{p},{lab}")
    manifest = tmp_path / "manifests" / "nightly.csv"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, data


def test_absolute_paths_without_root_stop_with_one_line(absolute_manifest, tmp_path):
    manifest, _ = absolute_manifest
    res = cli("curate", str(manifest), "--out", "run", "--until", "faces", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr  # one clear line, no Prefect traceback
    assert lines[0].startswith("error: ingest stopped: none of 6 input rows is usable")
    assert "path_escapes_root" in lines[0] and "--root" in lines[0]
    store = Store(tmp_path / "run")
    runs = store.read("runs").to_pylist()
    assert [r["status"] for r in runs] == ["failed"]
    assert "none of 6 input rows is usable" in runs[0]["error"]
    assert store.count("samples") == 0 and store.count("faces") == 0  # nothing half-written
    assert store.count("rejects") == 6


def test_absolute_paths_inside_root_ingest_every_row(absolute_manifest, tmp_path):
    manifest, data = absolute_manifest
    outside = write_png(tmp_path / "elsewhere" / "x.png", (48, 48), seed=9)
    with manifest.open("a") as fh:
        fh.write(f"{outside},happy\n")
    res = cli("curate", str(manifest), "--out", "run", "--until", "faces", "--root", str(data), "--json",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["samples"] == 6 and summary["input_rows"] == 7
    assert summary["rejects_by_reason"] == {"ingest:path_escapes_root": 1}
    assert summary["images_with_face"] == 6
    store = Store(tmp_path / "run")
    rows = store.read("samples", columns=["sample_id", "label_original"]).sort_by("sample_id").to_pylist()
    assert [r["sample_id"] for r in rows] == [f"images/img{i}.png" for i in range(6)]
    assert [r["label_original"] for r in rows] == ["happy", "angry", "sad", "happy", "angry", "neutral"]
    msg = store.read("rejects", columns=["message"]).column("message")[0].as_py()
    assert str(data) in msg and "--root" in msg  # the reject names the root and the flag


def test_reject_share_stop_and_plain_summary(tmp_path):
    root = tmp_path / "folder"
    for i in range(4):
        write_png(root / "happy" / f"ok{i}.png", (48, 48), seed=i)
    for i in range(6):
        (root / "sad" / f"bad{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (root / "sad" / f"bad{i}.png").write_text("not an image")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("ingest: {max_reject_share: 0.5}\n")
    res = cli("curate", str(root), "--out", "run", "--until", "faces", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "6 of 10 input rows rejected (60%, more than max_reject_share 50%)" in res.stderr
    assert "not_an_image" in res.stderr
    assert Store(tmp_path / "run").count("samples") == 0

    cfg.write_text("ingest: {max_reject_share: 0.7}\n")
    res = cli("curate", str(root), "--out", "run", "--until", "faces", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "4 samples from 10 input rows" in out
    assert "ingest:not_an_image 6" in out
    assert "next:" in out and "ferclean query" in out
