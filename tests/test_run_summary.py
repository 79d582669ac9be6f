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
    assert ("labels ~64% right; network ~43% right; the rule's relabels (sent to review, below) ~55% right vs ~20% "
            "for the labels they replace") in text
    assert "expected gain +3.1 points" in text
    assert "relabels were sent to review (reason domain_shift)" in text
    named = render(summary(domain_shift=True, domain_shift_checks=["label_accuracy_gain"]))
    assert "unlike the model's training data (label_accuracy_gain): relabels were sent" in named


def test_a_cached_stage_reports_the_rejects_of_the_run_that_computed_it(tmp_path):
    """A rerun that reuses the faces stage still says how many images had no face (it said 'rejects: none')."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from ferclean.run_summary import _current_rejects
    from ferclean.stage_cache import StageManifest, write_manifest
    from ferclean.store import Store

    store = Store(tmp_path)

    def rejects(run_id: str, stage: str, refs: list[str], reason: str) -> None:
        n = len(refs)
        store.append("rejects", pa.table({"run_id": [run_id] * n, "source_ref": refs, "stage": [stage] * n,
                                          "reason_code": [reason] * n, "message": ["m"] * n,
                                          "created_at": [datetime.now(UTC)] * n}), run_id)

    rejects("r1", "faces", ["a", "b"], "no_face")
    rejects("r1", "ingest", ["x"], "not_an_image")
    rejects("r2", "ingest", ["y"], "empty_file")
    write_manifest(store, StageManifest(stage="faces", input_fingerprint="i", config_hash="c", code_version="v",
                                        run_id="r1"))
    got = _current_rejects(store, "r2", {"ingest": {"cached": False}, "faces": {"cached": True}})
    assert got == {"faces:no_face": 2, "ingest:empty_file": 1}
    assert _current_rejects(store, "r2", {"ingest": {}, "faces": {}}) == {"ingest:empty_file": 1}


def test_prefect_api_not_starting_is_one_error_line(monkeypatch, capsys):
    """Under load Prefect's temporary API server may not answer in time: one `error:` line and exit 1, not a
    traceback; and the CLI gives it more time than Prefect's 20 s default unless the user set it."""
    import os

    import pytest
    import typer

    from ferclean import cli

    def flow(**kwargs):  # noqa: ANN003, ANN202
        raise RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server.")

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", os.environ.get("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO"))
    cli.quiet_flow_console()  # both variables are restored after the test
    assert os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == str(cli.EPHEMERAL_STARTUP_TIMEOUT_S)
    with pytest.raises((SystemExit, typer.Exit)) as exc:
        cli.run_flow(flow, source="x")
    code = exc.value.code if isinstance(exc.value, SystemExit) else exc.value.exit_code
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in err[0]
