"""The end-of-run summary's text (pure rendering of a RunSummary)."""

from __future__ import annotations

from ferclean.run_summary import RunSummary, render


def summary(**kw) -> RunSummary:  # noqa: ANN003
    base = dict(kind="relabel-collection", run_id="r1", out="/o", seconds=None, stages={"ingest": "cached"},
                input_rows=10, samples=9, images_with_face=8, faces_by_detector={"dlib": 6, "mmod": 2},
                rejects_by_reason={"ingest:not_an_image": 1, "faces:no_face": 1}, verdicts={"keep": 6, "review": 2},
                human_decisions=0, trust={}, domain_shift=None, model_dir=None, catalog="/o/catalog.duckdb",
                report=None, next_commands=["ferclean report /o"])
    return RunSummary(**{**base, **kw})


def test_counts_paths_and_next_commands():
    text = render(summary())
    assert "9 samples from 10 input rows" in text
    assert "8 images with a face (dlib 6, mmod 2)" in text  # which path found the faces
    assert "ingest:not_an_image 1, faces:no_face 1" in text
    assert "trust:" not in text and "shift:" not in text
    assert text.rstrip().endswith("ferclean report /o")


def test_trust_and_domain_shift_lines():
    text = render(summary(trust={"label_accuracy": 0.64, "model_accuracy": 0.43, "relabel_precision_est": 0.55,
                                 "replaced_label_right_est": 0.2, "expected_gain_points": 3.1},
                          domain_shift=True))
    assert "labels ~64% right; network ~43% right; relabels ~55% right vs ~20% for the labels they replace" in text
    assert "expected gain +3.1 points" in text
    assert "relabels were sent to review (reason domain_shift)" in text
