"""Review round-trip: queue CSV + thumbnails out, validated all-or-nothing decisions in."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from ferclean.catalog import query
from ferclean.cli import app
from ferclean.report.synthetic import make_demo_store
from ferclean.review import (
    CSV_COLUMNS,
    Context,
    DecisionError,
    export_review_queue,
    import_decisions,
    safe_name,
    validate_decisions,
)
from ferclean.store import Store


@pytest.fixture
def demo(tmp_path) -> Store:
    # 16 samples: verdicts cycle keep/relabel/review/drop -> s002, s006, s010, s014 under review
    return make_demo_store(tmp_path / "out", n_samples=16, with_curves=False)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _human(store: Store) -> dict[str, tuple]:
    sql = "SELECT sample_id, action, label_final, reviewer FROM latest_verdicts WHERE source = 'human'"
    return {r[0]: r[1:] for r in query(store, sql)[1]}


def test_export_writes_queue_in_priority_order_with_thumbnails(demo, tmp_path):
    res = export_review_queue(demo, tmp_path / "rev")
    rows = _read(Path(res["csv"]))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert {r["sample_id"] for r in rows} == {"s002", "s006", "s010", "s014"}
    prios = [float(r["priority"]) for r in rows]
    assert prios == sorted(prios, reverse=True)
    for r in rows:
        assert r["decision"] == r["decision_label"] == r["comment"] == ""
        assert r["model_action"] == "review"
        with Image.open(tmp_path / "rev" / r["thumbnail"]) as im:
            assert max(im.size) <= 128
    assert res["missing_images"] == 0
    again = export_review_queue(demo, tmp_path / "rev", limit=1)  # re-export replaces the thumbnails
    assert again["rows"] == 1 and len(list((tmp_path / "rev" / "thumbnails").glob("*.png"))) == 1


def test_import_appends_human_rows_that_win(demo, tmp_path):
    rows = _read(Path(export_review_queue(demo, tmp_path / "rev")["csv"]))
    by_id = {r["sample_id"]: r for r in rows}
    by_id["s002"].update(decision="relabel", decision_label="Happiness", comment="big smile")  # synonym
    by_id["s006"].update(decision="drop")
    by_id["s010"].update(decision="keep")
    by_id["s014"].update(decision="relabel")  # empty label = accept the model's suggestion
    rows.append(dict(by_id["s006"]))  # identical duplicate: allowed, collapses to one
    summary = import_decisions(demo, _write(tmp_path / "d.csv", rows), "ann")
    assert summary["applied"] == 4 and summary["undecided"] == 0
    human = _human(demo)
    assert human["s002"] == ("relabel", "happy", "ann")
    assert human["s006"] == ("drop", None, "ann")
    assert human["s010"] == ("keep", by_id["s010"]["label_original"], "ann")
    sugg = by_id["s014"]["label_suggested"]
    assert human["s014"] == (("keep" if sugg == by_id["s014"]["label_original"] else "relabel"), sugg, "ann")
    assert query(demo, "SELECT count(*) FROM review_queue")[1] == [(0,)]
    runs = query(demo, "SELECT kind, status FROM runs WHERE kind = 'review-import'")[1]
    assert runs == [("review-import", "completed")]
    comment = query(demo, "SELECT comment FROM relabels WHERE sample_id = 's002' AND source = 'human'")[1]
    assert comment == [("big smile",)]


def test_invalid_rows_are_all_listed_and_nothing_is_applied(demo, tmp_path):
    rows = _read(Path(export_review_queue(demo, tmp_path / "rev")["csv"]))
    rows[0].update(decision="relabel", decision_label="sad")  # valid on its own
    rows[1].update(decision="maybe")  # bad action
    rows[2].update(decision="relabel", decision_label="sleepy")  # unknown label
    rows[3].update(sample_id="no-such-sample", decision="keep")  # unknown sample
    rows.append(dict(rows[0], decision="drop", decision_label=""))  # conflicts with rows[0]
    path = _write(tmp_path / "bad.csv", rows)
    before = demo.count("relabels")
    with pytest.raises(DecisionError) as exc:
        import_decisions(demo, path, "ann")
    lines = sorted(e.line for e in exc.value.errors)
    assert lines == [2, 3, 4, 5, 6]
    text = str(exc.value)
    for needle in ("bad decision 'maybe'", "unknown label 'sleepy'", "unknown sample_id", "conflicting decisions"):
        assert needle in text
    assert demo.count("relabels") == before  # nothing partially applied
    rej = query(demo, "SELECT count(*) FROM rejects WHERE stage = 'review' AND reason_code = 'invalid_decision'")[1]
    assert rej == [(5,)]
    assert query(demo, "SELECT status FROM runs WHERE kind = 'review-import'")[1] == [("failed",)]


def test_validation_rules_on_tiny_inputs():
    ctx = Context(label_original={"a": "sad", "u": None},
                  verdict={"a": {"label_suggested": "happy"}, "u": {"label_suggested": None}})
    ok, errs, undecided = validate_decisions([
        {"sample_id": "a", "decision": "RELABEL", "decision_label": "sad"},  # same label -> keep
        {"sample_id": "u", "decision": "", "decision_label": ""},
    ], ctx)
    assert [(d.action, d.label_final) for d in ok] == [("keep", "sad")] and not errs and undecided == 1
    _ok, errs, _ = validate_decisions([
        {"sample_id": "u", "decision": "keep"},  # no original label
        {"sample_id": "u", "decision": "relabel"},  # nothing to accept
        {"sample_id": "a", "decision": "keep", "decision_label": "angry"},
        {"sample_id": "a", "decision": "drop", "decision_label": "angry"},
        {"sample_id": "", "decision": "drop"},
    ], ctx)
    assert [e.line for e in errs] == [2, 3, 4, 5, 6]


def test_missing_header_column_is_an_error(demo, tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("id,choice\ns000,keep\n")
    with pytest.raises(DecisionError, match="header lacks"):
        import_decisions(demo, p, "ann")


def test_cli_round_trip(demo, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["review", "export", str(demo.root), "--to", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    rows = _read(tmp_path / "q" / "review_queue.csv")
    rows[0]["decision"] = "drop"
    _write(tmp_path / "q" / "review_queue.csv", rows)
    res = runner.invoke(app, ["review", "import", str(demo.root), str(tmp_path / "q" / "review_queue.csv"),
                              "--reviewer", "bob"])
    assert res.exit_code == 0, res.output
    assert _human(demo) == {rows[0]["sample_id"]: ("drop", None, "bob")}
    rows[1]["decision"] = "nonsense"
    _write(tmp_path / "q" / "bad.csv", rows)
    res = runner.invoke(app, ["review", "import", str(demo.root), str(tmp_path / "q" / "bad.csv"), "--reviewer", "bob"])
    assert res.exit_code == 2 and "nonsense" in res.output


def test_safe_name_is_unique_and_flat():
    a, b = safe_name("train/angry/1.png"), safe_name("train_angry_1.png")
    assert "/" not in a and a != b and a.endswith(".png")


def test_audit_sample_round_trip_gives_the_class_prior(demo, tmp_path):
    from ferclean.relabel import audit_class_prior

    res = export_review_queue(demo, tmp_path / "aud", audit=6, seed=1)
    rows = _read(Path(res["csv"]))
    assert Path(res["csv"]).name == "audit_queue.csv" and res["rows"] == 6
    assert all(r["reasons"] == "audit" for r in rows)
    again = _read(Path(export_review_queue(demo, tmp_path / "aud2", audit=6, seed=1)["csv"]))
    assert [r["sample_id"] for r in again] == [r["sample_id"] for r in rows]  # seeded draw
    labels = ["happy", "happy", "sad", "neutral", "happy", None]
    for r, lab in zip(rows, labels, strict=True):
        if lab is None:
            r.update(decision="drop")
        elif lab == r["label_original"]:
            r.update(decision="keep")
        else:
            r.update(decision="relabel", decision_label=lab)
    import_decisions(demo, _write(tmp_path / "d.csv", rows), "auditor")
    reasons = query(demo, "SELECT reasons FROM relabels WHERE source = 'human'")[1]
    assert all("audit" in list(r[0]) for r in reasons) and len(reasons) == 6
    classes = ["neutral", "happy", "sad"]
    assert audit_class_prior(demo, classes, min_n=6) == (None, 5)  # the drop does not count
    prior, n = audit_class_prior(demo, classes, min_n=5)
    assert n == 5 and prior == pytest.approx([1.5 / 6.5, 3.5 / 6.5, 1.5 / 6.5])
    from ferclean.relabel import RelabelConfig, run_relabel
    from ferclean.runs import open_run

    with open_run(demo, "relabel", {}) as run:
        used = run_relabel(demo, run, RelabelConfig(method="ulcag", audit_min=5), progress=False)
        plain = run_relabel(demo, run, RelabelConfig(method="ulcag", audit_min=50), progress=False)
    assert used["class_prior"] == "audit (5 samples)" and plain["class_prior"] == "estimated"
