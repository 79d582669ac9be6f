"""The review app's HTTP endpoints (FastAPI TestClient): token, queues, filters, details, images,
decisions through the review-import validation, undo, concurrency, bad input."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from ferclean.catalog import query
from ferclean.report.synthetic import make_demo_store
from ferclean.review_app.server import TOKEN_HEADER, create_app, is_loopback, serve

TOKEN = "t" * 32


@pytest.fixture
def demo(tmp_path):
    # 16 samples: verdicts cycle keep/relabel/review/drop -> s002, s006, s010, s014 under review
    return make_demo_store(tmp_path / "out", n_samples=16, with_curves=False)


@pytest.fixture
def client(demo):
    app = create_app(demo, TOKEN, audit=6, seed=1, reviewer="ann")
    with TestClient(app) as c:
        c.headers[TOKEN_HEADER] = TOKEN
        yield c


def latest(store) -> dict[str, tuple]:
    sql = "SELECT sample_id, source, action, label_final, reviewer FROM latest_verdicts"
    return {r[0]: r[1:] for r in query(store, sql)[1]}


def decide(c, sid, decision, label=None, reviewer="ann"):
    return c.post("/api/decide", json={"sample_id": sid, "decision": decision, "label": label, "reviewer": reviewer})


# -- token -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/config", "/api/queue", "/api/sample?id=s002",
                                  "/api/status", "/img/crop?id=s002", "/img/original?id=s002"])
def test_every_route_needs_the_token(demo, path):
    c = TestClient(create_app(demo, TOKEN))
    assert c.get(path).status_code == 401
    assert c.get(path, headers={TOKEN_HEADER: "wrong" * 8}).status_code == 401
    sep = "&" if "?" in path else "?"
    assert c.get(f"{path}{sep}token=nope").status_code == 401
    assert c.get(f"{path}{sep}token={TOKEN}").status_code == 200
    assert c.post("/api/decide", json={"sample_id": "s002", "decision": "keep", "reviewer": "x"}).status_code == 401
    assert c.post("/api/undo", json={"sample_id": "s002", "reviewer": "x"}).status_code == 401


def test_short_token_and_remote_bind_are_refused(demo):
    with pytest.raises(ValueError, match="at least 16"):
        create_app(demo, "short")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(ValueError, match="--allow-remote"):
        serve(demo.root, host="0.0.0.0")


def test_page_and_static_files_carry_the_token(client):
    html = client.get("/").text
    assert f"static/app.js?token={TOKEN}" in html and f"static/app.css?token={TOKEN}" in html
    assert "http://" not in html and "https://" not in html  # nothing from a CDN
    assert "keydown" in client.get("/static/app.js").text
    assert client.get("/static/../server.py").status_code == 404
    assert client.get("/static/%2e%2e%2fserver.py").status_code == 404
    assert client.get("/static/index.html.bak").status_code == 404


# -- reading ---------------------------------------------------------------------------------------
def test_config_and_queues(client):
    cfg = client.get("/api/config").json()
    assert cfg["classes"][:3] == ["neutral", "happy", "sad"] and cfg["reviewer"] == "ann"
    assert cfg["modes"] == {"review": 4, "audit": 6}
    q = client.get("/api/queue").json()
    assert [i["sample_id"] for i in q["items"]] == [r[0] for r in query(client.app.state.review.store,
                                                                          "SELECT sample_id FROM review_queue")[1]]
    assert q["total"] == 4 and q["decided"] == 0
    audit = client.get("/api/queue", params={"mode": "audit"}).json()
    assert len(audit["items"]) == 6
    assert client.get("/api/queue", params={"mode": "nonsense"}).status_code == 400


def test_queue_filters(client):
    items = client.get("/api/queue", params={"mode": "audit"}).json()["items"]
    some = items[0]
    for key in ("label_original", "label_suggested"):
        got = client.get("/api/queue", params={"mode": "audit", key: some[key]}).json()["items"]
        assert got and all(i[key] == some[key] for i in got)
        assert len(got) == sum(i[key] == some[key] for i in items)
    with_reason = [i for i in items if i["reasons"]]
    if with_reason:
        r = with_reason[0]["reasons"][0]
        got = client.get("/api/queue", params={"mode": "audit", "reason": r}).json()["items"]
        assert {i["sample_id"] for i in got} == {i["sample_id"] for i in items if r in i["reasons"]}
    assert client.get("/api/queue", params={"mode": "audit", "quality_flag": "no-such-flag"}).json()["items"] == []
    facets = client.get("/api/queue", params={"mode": "audit"}).json()["facets"]
    assert some["label_original"] in facets["label_original"]


def test_sample_detail(client):
    d = client.get("/api/sample", params={"id": "s002"}).json()
    assert d["sample"]["label_original"] and d["verdict"]["action"] == "review"
    assert len(d["probs"]) == 7 and abs(sum(p["p"] for p in d["probs"]) - 1) < 1e-3
    assert d["has_crop"] and d["history"] == [] and not d["can_undo"]
    assert "source_path" not in d["sample"]  # only the file name is shown
    assert client.get("/api/sample", params={"id": "nope"}).status_code == 404
    assert client.get("/api/sample").status_code == 422


def test_images_by_sample_id_only(client, demo):
    crop = client.get("/img/crop", params={"id": "s002"})
    assert crop.status_code == 200 and crop.content[:8] == b"\x89PNG\r\n\x1a\n"
    orig = client.get("/img/original", params={"id": "s002"})
    assert orig.status_code == 200 and orig.headers["content-type"] == "image/png"
    (demo.root / "secret.txt").write_text("secret")
    for bad in ("../secret.txt", str(demo.root / "secret.txt"), "/etc/passwd", "..%2F..%2Fetc%2Fpasswd",
                "s002/../../secret.txt", "nope"):
        for kind in ("crop", "original"):
            r = client.get(f"/img/{kind}", params={"id": bad})
            assert r.status_code == 404 and b"secret" not in r.content, (kind, bad)
    assert client.get("/img/../catalog.duckdb").status_code == 404
    assert client.get("/img/original/../../secret.txt").status_code == 404


# -- writing ---------------------------------------------------------------------------------------
def test_decisions_are_human_rows_at_once(client, demo):
    assert decide(client, "s002", "relabel", "Happiness").json()["label_final"] == "happy"  # synonym
    assert decide(client, "s006", "drop").status_code == 200
    assert decide(client, "s010", "keep").status_code == 200
    assert decide(client, "s014", "relabel").status_code == 200  # empty label = the suggestion
    got = latest(demo)  # read through a fresh catalog: the rows are on disk already
    assert got["s002"] == ("human", "relabel", "happy", "ann")
    assert got["s006"] == ("human", "drop", None, "ann")
    assert got["s010"][:2] == ("human", "keep")
    q = client.get("/api/queue").json()
    assert q["decided"] == 4 and q["total"] == 4  # decided samples stay in the app's queue
    assert [i["sample_id"] for i in client.get("/api/queue", params={"decided": "false"}).json()["items"]] == []
    runs = query(demo, "SELECT count(*) FROM runs WHERE kind = 'review-app' AND status = 'completed'")[1]
    assert runs == [(4,)]


def test_bad_decisions_are_refused_and_nothing_is_written(client, demo):
    before = demo.count("relabels")
    assert decide(client, "nope", "keep").status_code == 404
    r = decide(client, "s002", "relabel", "grumpy")
    assert r.status_code == 400 and "unknown label" in r.json()["detail"]
    assert decide(client, "s002", "maybe").status_code == 400
    assert decide(client, "s002", "").status_code == 400
    assert decide(client, "s002", "drop", "happy").status_code == 400
    orig = client.get("/api/sample", params={"id": "s002"}).json()["sample"]["label_original"]
    other = next(c for c in ("happy", "sad") if c != orig)
    assert decide(client, "s002", "keep", other).status_code == 400
    assert decide(client, "s002", "keep", reviewer="").status_code == 422
    assert client.post("/api/decide", json={"sample_id": "s002"}).status_code == 422
    assert client.post("/api/decide", content=b"not json", headers={"content-type": "application/json"}).status_code == 422
    assert demo.count("relabels") == before


def test_audit_decisions_carry_the_audit_reason_and_status_counts_them(client, demo):
    audit_ids = [i["sample_id"] for i in client.get("/api/queue", params={"mode": "audit"}).json()["items"]]
    for sid in audit_ids[:3]:
        assert decide(client, sid, "relabel", "happy").status_code == 200
    reasons = query(demo, "SELECT sample_id, reasons FROM relabels WHERE source = 'human'")[1]
    assert all("audit" in list(r[1]) for r in reasons) and len(reasons) == 3
    st = client.get("/api/status").json()
    assert st["n_audit"] == 3 and st["audit_min"] == 100 and not st["audit_reached"]
    from ferclean.relabel import audit_class_prior

    decide(client, audit_ids[3], "drop")  # drops do not count, as in the relabel stage
    client.post("/api/undo", json={"sample_id": audit_ids[0], "reviewer": "ann"})  # nor retractions
    assert client.get("/api/status").json()["n_audit"] == audit_class_prior(demo, client.get("/api/config").json()["classes"], 1)[1] == 2
    assert st["command"].startswith("ferclean curate ")


def test_undo_restores_the_previous_state_and_keeps_history(client, demo):
    model = latest(demo)["s002"]
    decide(client, "s002", "relabel", "happy")
    decide(client, "s002", "relabel", "fear", reviewer="bob")
    assert latest(demo)["s002"] == ("human", "relabel", "fear", "bob")
    r = client.post("/api/undo", json={"sample_id": "s002", "reviewer": "bob"}).json()
    assert r["undone"]["label_final"] == "fear" and r["restored"]["label_final"] == "happy"
    assert latest(demo)["s002"][:3] == ("human", "relabel", "happy")
    client.post("/api/undo", json={"sample_id": "s002", "reviewer": "ann"})
    assert latest(demo)["s002"] == model  # back to the model's verdict
    assert client.post("/api/undo", json={"sample_id": "s002", "reviewer": "ann"}).status_code == 409
    assert client.post("/api/undo", json={"sample_id": "nope", "reviewer": "ann"}).status_code == 404
    hist = client.get("/api/sample", params={"id": "s002"}).json()["history"]
    assert len(hist) == 4 and [h["action"] for h in hist][:2] == ["relabel", "relabel"]
    assert demo.count("relabels") == 16 + 4


def test_concurrent_decisions_on_one_sample_last_wins_all_kept(client, demo):
    barrier = threading.Barrier(8)

    def go(i: int) -> int:
        barrier.wait()
        return decide(client, "s006", "relabel", ["happy", "sad", "fear", "angry"][i % 4], reviewer=f"r{i}").status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(go, range(8)))
    assert codes == [200] * 8
    rows = query(demo, "SELECT reviewer, label_final, decided_at FROM relabels "
                       "WHERE sample_id = 's006' AND source = 'human' ORDER BY decided_at")[1]
    assert len(rows) == 8 and len({r[2] for r in rows}) == 8  # serialized: distinct times, all kept
    orig = client.get("/api/sample", params={"id": "s006"}).json()["sample"]["label_original"]
    last_action = "keep" if rows[-1][1] == orig else "relabel"  # relabelling to the given label is a keep
    assert latest(demo)["s006"] == ("human", last_action, rows[-1][1], rows[-1][0])  # the last one wins
    assert query(demo, "SELECT count(*) FROM latest_verdicts WHERE sample_id = 's006'")[1] == [(1,)]


def test_two_apps_on_one_run_do_not_overwrite_each_other(demo):
    a = TestClient(create_app(demo, TOKEN))
    b = TestClient(create_app(demo, TOKEN))
    for c in (a, b):
        c.headers[TOKEN_HEADER] = TOKEN
    decide(a, "s002", "keep", reviewer="ann")
    decide(b, "s010", "drop", reviewer="bob")
    decide(b, "s002", "drop", reviewer="bob")
    got = latest(demo)
    assert got["s002"] == ("human", "drop", None, "bob") and got["s010"] == ("human", "drop", None, "bob")
    assert query(demo, "SELECT count(*) FROM relabels WHERE source = 'human'")[1] == [(3,)]
    assert a.get("/api/sample", params={"id": "s002"}).json()["verdict"]["reviewer"] == "bob"  # a sees b's


def test_cli_review_serve_help_and_refusals(demo):
    from typer.testing import CliRunner

    from ferclean.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["review", "serve", "--help"])
    assert res.exit_code == 0 and "--allow-remote" in res.output and "token" in res.output
    res = runner.invoke(app, ["review", "serve", str(demo.root), "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "--allow-remote" in res.output


def test_accepting_the_suggestion_takes_the_models_latest_one(client, demo):
    import pyarrow as pa

    from ferclean.contracts import load_contract

    decide(client, "s002", "keep")
    row = query(demo, "SELECT * FROM relabels WHERE sample_id = 's002' AND source = 'model'")[1][0]
    names = [c.name for c in load_contract("relabels").columns]
    newer = dict(zip(query(demo, "SELECT * FROM relabels LIMIT 0")[0], row, strict=True))
    newer = {k: newer[k] for k in names}
    orig = newer["label_original"]
    sugg = next(c for c in ("fear", "disgust") if c != orig)
    newer.update(run_id="later-model-run", label_suggested=sugg, label_final=orig, action="review")
    newer["decided_at"] = newer["decided_at"].replace(year=newer["decided_at"].year + 1)
    demo.append("relabels", pa.Table.from_pylist([newer], schema=load_contract("relabels").schema()), "later")
    v = client.get("/api/sample", params={"id": "s002"}).json()["verdict"]
    assert v["source"] == "human" and v["model_label_suggested"] == sugg and v["model_disagrees_with_human"]
    assert decide(client, "s002", "relabel").json()["label_final"] == sugg


def test_sample_detail_lists_near_duplicates(demo):
    import json

    from ferclean.report.synthetic import fill_contract_rows

    demo.write_part("dataset_issues", "t", fill_contract_rows("dataset_issues", [
        {"run_id": "d", "issue_id": "near_duplicate:c1", "issue_type": "near_duplicate", "cluster_id": "c1",
         "sample_ids": ["s002", "s005", "s009"], "score": 0.9, "details": json.dumps({"keep": "s002"})},
        {"run_id": "d", "issue_id": "outlier:s002", "issue_type": "outlier", "cluster_id": None,
         "sample_ids": ["s002"], "score": 0.5, "details": "{}"},
    ]))
    c = TestClient(create_app(demo, TOKEN))
    c.headers[TOKEN_HEADER] = TOKEN
    dups = c.get("/api/sample", params={"id": "s005"}).json()["duplicates"]
    assert [d["sample_id"] for d in dups] == ["s002", "s009"] and dups[0]["cluster_id"] == "c1"
    assert dups[0]["label_original"] and dups[0]["issue_type"] == "near_duplicate"
    assert c.get("/api/sample", params={"id": "s003"}).json()["duplicates"] == []
