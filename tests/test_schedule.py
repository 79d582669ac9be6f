"""Scheduled runs fire, as a data engineer sets them up (README "Nightly run against a folder").

Real components, started for real: a `prefect server` process on a free loopback port and
`ferclean serve` as a subprocess with a short interval schedule over a tiny collection.

- README recipe (PREFECT_API_URL set): a scheduled curate run reaches Completed in the server and
  a completed `runs` row appears in OUT. Before the SQLAlchemy pin (2.1 installed) the server's
  scheduler failed on every loop, so no run was ever created.
- Without PREFECT_API_URL, `ferclean serve` starts and owns a server (before: Prefect's embedded
  API, which never creates scheduled runs): a scheduled run on a collection with no usable row
  shows as Failed in the server with the error, leaves a failed `runs` row and no samples; SIGTERM
  stops serve and its server.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import two_class_folder, write_png

from ferclean.prefect_server import LocalPrefectServer, api_healthy
from ferclean.store import Store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY = ("faces: {shard_size: 4, contact_sheet_n: 0}\n"
        "train: {epochs: 1, width: 4, folds: 2, batch_size: 4, methods: [ce], final_method: ce, "
        "checkpoint: false, input_size: 24, num_threads: 1}\n")
SCHEDULER_LOOP_S = "3"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update({"FERCLEAN_NO_PROGRESS": "1", "PYTHONPATH": str(REPO),
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": SCHEDULER_LOOP_S}, **extra)
    return env


def _serve(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    fh = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "ferclean.cli", "serve", *args], cwd=cwd, env=env,
                            stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def _flow_runs(api_url: str) -> list[dict]:
    body = json.dumps({"flow_runs": {}, "deployments": {"name": {"any_": ["nightly-curate"]}},
                       "limit": 50, "offset": 0, "sort": "EXPECTED_START_TIME_ASC"}).encode()
    req = urllib.request.Request(f"{api_url}/flow_runs/filter", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return json.loads(resp.read())


def _wait(cond, timeout: float, proc: subprocess.Popen, log: Path):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            pytest.fail(f"ferclean serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    pytest.fail(f"timed out after {timeout:.0f} s; serve log:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


@pytest.fixture
def collection(tmp_path: Path) -> Path:
    root = tmp_path / "incoming"
    two_class_folder(root, 8)
    return root


def test_readme_recipe_scheduled_run_completes(collection, tmp_path):
    cfg = tmp_path / "stages.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "nightly"
    log = tmp_path / "serve.log"
    with LocalPrefectServer(tmp_path / "prefect-home", scheduler_loop_s=float(SCHEDULER_LOOP_S)) as server:
        env = _env(PREFECT_API_URL=server.api_url)
        proc = _serve([str(collection), "--out", str(out), "--interval", "10", "--config", str(cfg)],
                      tmp_path, env, log)
        try:
            def completed() -> list[dict]:
                return [r for r in _flow_runs(server.api_url) if r["state_type"] == "COMPLETED"]

            runs = _wait(completed, 240, proc, log)
            assert runs[0]["auto_scheduled"] is True  # created by the server's scheduler, not by hand
            rows = _wait(lambda: [r for r in Store(out).read("runs").to_pylist() if r["status"] == "completed"],
                         30, proc, log)
            assert rows[0]["kind"] == "curate"
            verdicts = Store(out).read("relabels", columns=["sample_id"]).column("sample_id").to_pylist()
            assert len(set(verdicts)) == 8  # every sample has a verdict (later runs may have added more rows)
        finally:
            assert _stop(proc) == 0, log.read_text()[-3000:]


def test_serve_owns_a_server_and_a_failed_run_shows_failed(tmp_path):
    # A manifest of absolute paths outside its folder and no --root: the scheduled run must fail.
    images = tmp_path / "data"
    lines = ["image_path,label"] + [f"{write_png(images / f'i{i}.png', (48, 48), seed=i)},happy" for i in range(3)]
    manifest = tmp_path / "manifests" / "nightly.csv"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "nightly"
    log = tmp_path / "serve.log"
    proc = _serve([str(manifest), "--out", str(out), "--interval", "10"], tmp_path, _env(), log)
    try:
        ui = _wait(lambda: re.search(r"Prefect UI: (http://127\.0\.0\.1:\d+)", log.read_text()), 180, proc, log)
        api_url = ui.group(1) + "/api"
        assert (out / ".prefect" / "prefect.db").is_file()  # the server's state lives under OUT

        def failed() -> list[dict]:
            return [r for r in _flow_runs(api_url) if r["state_type"] == "FAILED"]

        runs = _wait(failed, 180, proc, log)
        messages = [r["state"]["message"] for r in runs]
        assert all("ingest stopped: none of 3 input rows is usable" in m for m in messages), messages
        rows = _wait(lambda: Store(out).read("runs").to_pylist(), 30, proc, log)
        assert rows[0]["status"] == "failed" and "--root" in rows[0]["error"]
        assert Store(out).count("samples") == 0
    finally:
        rc = _stop(proc)
    assert rc == 0, log.read_text()[-3000:]
    assert not api_healthy(api_url, timeout=2)  # SIGTERM stopped the server ferclean started
