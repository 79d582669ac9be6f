"""HTML report: renders offline on a synthetic store, degrades to "Not available" sections."""

from __future__ import annotations

import base64
import io
import json
import re

import pytest
from PIL import Image
from typer.testing import CliRunner

from ferclean.cli import app
from ferclean.contracts import contract_tables
from ferclean.report import build_report, render_report
from ferclean.report.data import _as_curve, training_curves
from ferclean.report.synthetic import make_demo_store
from ferclean.store import Store

IMG_RE = re.compile(r'<img[^>]*src="([^"]+)"')


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Store:
    return make_demo_store(tmp_path_factory.mktemp("report") / "out", n_samples=28)


def test_report_is_self_contained_and_has_every_section(demo):
    path = build_report(demo)
    html = path.read_text()
    srcs = IMG_RE.findall(html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:  # every inline image decodes to a real PNG
        im = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert im.format == "PNG" and im.width > 0
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network
    for title in ("Verdicts", "Original → final label", "Flag rate per original class", "Training curves",
                  "Top flagged faces"):
        assert title in html
    # 28 samples cycle keep/relabel/review/drop -> 21 flagged, the sheet shows the top 24 (all 21)
    assert html.count('class="card"') == 21
    assert "curves.json" in html
    if "au_graph" in contract_tables():
        assert 'alt="AU co-occurrence"' in html
    if {"faces", "aus"} <= set(contract_tables()):
        assert 'alt="AU prevalence by original class"' in html


def test_report_on_an_empty_store_says_not_available(tmp_path):
    s = Store(tmp_path / "empty")
    s.tables_dir.mkdir(parents=True)
    html = render_report(s)
    assert html.count("Not available") >= 6
    assert "<img" not in html


def test_report_cli(tmp_path):
    small = make_demo_store(tmp_path / "small", n_samples=8, with_faces=False, with_curves=False)
    dest = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["report", str(small.root), "--to", str(dest), "--top", "3"])
    assert res.exit_code == 0, res.output
    assert dest.read_text().count('class="card"') == 3
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code != 0


def test_curve_parsing_formats(tmp_path):
    recs = [{"method": "ce", "fold": f, "epoch": e, "loss": 1 / e, "acc": e / 10, "seconds": 12.0}
            for f in (0, 1) for e in (1, 2, 3)]
    curves = _as_curve("h", recs)
    assert [c.title for c in curves] == ["h [method=ce, fold=0]", "h [method=ce, fold=1]"]
    assert curves[0].x == [1.0, 2.0, 3.0] and set(curves[0].series) == {"loss", "acc"}  # seconds left out
    restarts = [{"method": "ce", "epoch": e, "loss": 1 / e} for _fold in (0, 1) for e in (1, 2)]
    assert [c.title for c in _as_curve("r", restarts)] == ["r [method=ce]", "r [method=ce, run 2]"]
    col = _as_curve("c", {"train_loss": [3.0, 2.0], "note": "x"})
    assert col[0].x == [1.0, 2.0] and col[0].series == {"train_loss": [3.0, 2.0]}
    assert _as_curve("n", {"a": 1, "b": "text"}) == []
    s = Store(tmp_path / "o")
    (s.run_dir("r1") / "bad.json").write_text("{not json")
    (s.run_dir("r1") / "history.json").write_text(json.dumps({"history": recs[:3]}))
    got = training_curves(s)
    assert len(got) == 1 and got[0].title == "r1 / history.json / history"
