"""The README's audit recipe end to end, through the real flow and CLI: curate, `review export
--audit`, decisions filled in, `review import`, curate again. The human decisions must survive the
re-run (whose model rows are newer) in latest_verdicts, the cleaned export and the report, and the
re-run must use the audit's class mix as its prior.
"""

from __future__ import annotations

import csv
import json

import pytest
from conftest import two_class_folder
from typer.testing import CliRunner

from ferclean.catalog import query
from ferclean.cli import app
from ferclean.store import Store

pytest.importorskip("prefect")
pytest.importorskip("ferclean.train")

FAST = {"retries": 0, "retry_delay_s": 0.0}
CONFIG = ("faces: {shard_size: 6, contact_sheet_n: 0}\n"
          "train: {epochs: 1, width: 4, folds: 2, batch_size: 4, methods: [ce], final_method: ce, "
          "checkpoint: false, input_size: 24, num_threads: 1}\n"
          "relabel: {audit_min: 5}\n")


@pytest.fixture(scope="module")
def prefect_api():
    """The session's Prefect test API when test_flows started one, else a temporary one."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _cli(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.slow  # ~60 s on 2 cores: two curate runs (1-epoch training) on 12 images
def test_audit_recipe_human_decisions_survive_the_rerun(prefect_api, tmp_path):
    from flows.curate import curate_flow

    src = tmp_path / "collection"
    two_class_folder(src, 12)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "run"
    store = Store(out)
    curate_flow(source=str(src), out=str(out), config_file=str(cfg), **FAST)

    # the recipe: review export --audit, decisions filled in, review import
    _cli("review", "export", str(out), "--audit", "8")
    queue = out / "audit" / "audit_queue.csv"
    with queue.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8
    want: dict[str, tuple[str, str | None]] = {}
    for i, r in enumerate(rows):  # decisions unlike the model's: keep / relabel to an unusual class / drop
        if i % 4 == 3:
            r["decision"] = "drop"
            want[r["sample_id"]] = ("drop", None)
        elif i % 4 == 2:
            r["decision"] = "keep"
            want[r["sample_id"]] = ("keep", r["label_original"])
        else:
            r["decision"], r["decision_label"] = "relabel", "surprise" if i % 2 else "fear"
            want[r["sample_id"]] = ("relabel", r["decision_label"])
    with queue.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    _cli("review", "import", str(out), str(queue), "--reviewer", "ana")

    # curate again: the relabel stage re-runs (its output changed) and writes newer model rows
    again = curate_flow(source=str(src), out=str(out), config_file=str(cfg), **FAST)
    assert not again["stages"]["relabel"].get("cached")
    runs = query(store, "SELECT count(DISTINCT run_id) FROM relabels WHERE source = 'model'")[1]
    assert runs == [(2,)]
    newer = query(store, """SELECT count(*) FROM relabels m JOIN relabels h USING (sample_id)
                            WHERE m.source = 'model' AND h.source = 'human' AND m.decided_at > h.decided_at""")[1]
    assert newer == [(8,)]  # every human row has a newer model row

    # latest_verdicts: the human decisions are final
    got = {r[0]: r[1:] for r in query(store, "SELECT sample_id, source, action, label_final, reviewer "
                                             "FROM latest_verdicts")[1]}
    assert len(got) == 12
    for sid, (action, label) in want.items():
        assert got[sid] == ("human", action, label, "ana"), sid
    assert sum(v[0] == "human" for v in got.values()) == 8
    # ... and the re-run used the audit's class mix as its prior
    curate_runs = query(store, "SELECT counts, config FROM runs WHERE kind = 'curate' ORDER BY started_at")[1]
    assert len(curate_runs) == 2
    manifest = json.loads((out / "stages" / "relabel.json").read_text())
    assert "audit (" in json.dumps(manifest.get("summary", {}))

    # the cleaned export follows the human decisions
    _cli("export", str(out), "--to", str(tmp_path / "clean"), "--layout", "manifest")
    with (tmp_path / "clean" / "manifest.csv").open(newline="") as fh:
        exported = {r["sample_id"]: r for r in csv.DictReader(fh)}
    for sid, (action, label) in want.items():
        if action == "drop":
            assert sid not in exported
        else:
            assert exported[sid]["label"] == label and exported[sid]["decided_by"] == "human", sid

    # the report shows them
    _cli("report", str(out))
    html = (out / "report.html").read_text()
    assert "<td>human</td>" in html
    assert '<p id="human-decisions">8 samples carry a human decision' in html
