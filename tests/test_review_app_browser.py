"""The review app in a real headless Chromium (Selenium): review five faces with the keyboard,
undo one, reload, and the four decisions are in latest_verdicts.

Needs Debian's chromium + chromium-driver (`apt-get install -y chromium chromium-driver`) and the
`selenium` package (the `dev` extra); skipped with the reason otherwise.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from ferclean.catalog import query
from ferclean.report.synthetic import make_demo_store
from ferclean.review_app.server import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="headless Chromium or chromedriver not installed (apt-get install -y chromium chromium-driver)",
)
TOKEN = "b" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    import uvicorn

    store = make_demo_store(tmp_path / "out", n_samples=24, with_curves=False)  # 6 samples under review
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, TOKEN, reviewer="ann"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield store, f"http://127.0.0.1:{port}/?token={TOKEN}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield drv
    drv.quit()


def _wait(cond, timeout: float = 20.0, what: str = ""):  # noqa: ANN001, ANN202
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _human(store) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in query(store, "SELECT sample_id, action, label_final, reviewer FROM latest_verdicts "
                                              "WHERE source = 'human'")[1]}


@pytest.mark.slow  # ~10 s: a browser start and a dozen requests
def test_five_keyboard_decisions_undo_one_reload(served, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    store, url = served
    queue = [r[0] for r in query(store, "SELECT sample_id FROM review_queue")[1]]
    assert len(queue) == 6
    browser.get(url)
    _wait(lambda: browser.execute_script("return document.body.dataset.ready") == "1", what="the page")
    assert browser.find_element(By.ID, "sid").text == queue[0]
    assert browser.find_element(By.ID, "reviewer").get_attribute("value") == "ann"
    _wait(lambda: browser.execute_script(
        "const i = document.getElementById('crop'); return i.complete && i.naturalWidth > 0"), what="the crop image")

    # five decisions, one keystroke each: relabel to class 1, keep, drop, accept the suggestion, relabel to 2
    ActionChains(browser).send_keys("1", "k", "d", Keys.ENTER, "2").perform()
    _wait(lambda: len(_human(store)) == 5, what="five decisions on disk")
    ActionChains(browser).send_keys("u").perform()  # undo the last one
    _wait(lambda: len(_human(store)) == 4, what="the undo on disk")
    assert browser.find_element(By.ID, "sid").text == queue[4]  # the page went back to the undone face

    browser.refresh()
    _wait(lambda: browser.execute_script("return document.body.dataset.ready") == "1", what="the reloaded page")
    human = _human(store)
    assert set(human) == set(queue[:4])
    assert human[queue[0]][1] == "neutral" and human[queue[1]][0] == "keep" and human[queue[2]] == ("drop", None, "ann")
    assert all(v[2] == "ann" for v in human.values())
    assert "4 / 6 decided" in browser.find_element(By.ID, "progress-text").text
    assert browser.find_element(By.ID, "sid").text == queue[4]  # reload resumes at the first undecided face
    shot = tmp_path / "review_app.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    Path(shot).unlink()
