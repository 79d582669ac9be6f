"""A 100-face audit through the review app in headless Chromium, keyboard only, decided by the
FER+ crowd votes as a script would; then the verdicts are re-run with the audit prior.

    python benchmarks/review_app_audit.py OUT [--n 100] [--seed 0] [--save review_app_audit.json]

OUT is a finished `ferclean curate` run on (a slice of) ../shared/data/fer2013/labels.csv. Steps:
1. score OUT's current final labels (latest_verdicts) against the FER+ plurality;
2. start `ferclean review serve OUT --audit N` (a subprocess, the printed URL with its token);
3. in Chromium (selenium) decide each audit face with ONE keystroke: drop (`d`) when the FER+
   plurality is a tie or not one of the 7 classes, keep (`k`) when it equals the given label, else
   the class's number key; time each decision from the keystroke until the next face (and its
   crop) is on screen - the app's latency per decision, not a human's thinking time;
4. screenshot the page (benchmarks/results/review_app.png), read the re-run command the page shows
   once the audit reached audit_min, stop the server and run that command (relabel re-runs);
5. check every human decision is still in latest_verdicts, and score the final labels again, on
   all evaluable train rows and on those outside the audit.
Writes benchmarks/results/<save> (JSON) when --save is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from noise_real_full import PLURALITY  # noqa: E402

from ferclean.catalog import query  # noqa: E402
from ferclean.store import Store  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def score(store: Store, exclude: set[str] = frozenset()) -> dict:
    """Accuracy of latest_verdicts' final labels (drops keep the raw label) vs the FER+ plurality."""
    rows = query(store, """
        SELECT s.sample_id, s.label_original, s.ferplus_majority, s.label_ambiguous, v.action, v.label_final, v.source
        FROM samples s LEFT JOIN latest_verdicts v USING (sample_id) WHERE s.split = 'train'""")[1]
    ev = [r for r in rows if PLURALITY.get(r[2]) and r[1] and not r[3] and r[0] not in exclude]
    raw = np.array([r[1] == PLURALITY[r[2]] for r in ev])
    final = np.array([(r[5] if r[4] != "drop" and r[5] else r[1]) == PLURALITY[r[2]] for r in ev])
    return {"eval_rows": len(ev), "raw_accuracy": round(float(raw.mean()), 4),
            "final_accuracy": round(float(final.mean()), 4),
            "human_rows": sum(r[6] == "human" for r in ev)}


def truth_keys(store: Store, classes: list[str]) -> dict[str, str]:
    """sample_id -> the one key a FER+-following reviewer presses."""
    keys = {}
    for sid, lo, maj in query(store, "SELECT sample_id, label_original, ferplus_majority FROM samples")[1]:
        truth = PLURALITY.get(maj)
        keys[sid] = "d" if truth is None else "k" if truth == lo else str(classes.index(truth) + 1)
    return keys


def main() -> None:  # noqa: PLR0915
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=8777)
    ap.add_argument("--save", default=None)
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains

    store = Store(args.out)
    from ferclean.catalog import connect
    from ferclean.review import audit_draw

    con = connect(store)
    try:
        draw = {r[0] for r in audit_draw(con, args.n, args.seed)}  # the ids the app will offer
    finally:
        con.close()
    before, before_outside = score(store), score(store, exclude=draw)
    print("before the audit:", before, flush=True)
    env = {**os.environ, "FERCLEAN_NO_PROGRESS": "1"}
    srv = subprocess.Popen([sys.executable, "-m", "ferclean.cli", "review", "serve", str(store.root), "--audit",
                            str(args.n), "--seed", str(args.seed), "--port", str(args.port), "--reviewer", "bench"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = None
    for line in srv.stdout:
        m = re.search(r"(http://\S+token=\S+)", line)
        if m:
            url = m.group(1)
            break
    assert url, "the server printed no URL"
    time.sleep(1.0)
    opts = Options()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,820"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    js_ready = "return document.body.dataset.ready === '1'"
    js_face = ("const i = document.getElementById('crop'); return [document.getElementById('sid').textContent, "
               "i.complete && i.naturalWidth > 0]")
    try:
        drv.get(url)
        t0 = time.time()
        while not drv.execute_script(js_ready):
            assert time.time() - t0 < 60, "page did not load"
            time.sleep(0.05)
        classes = drv.execute_script("return S.classes")
        keys = truth_keys(store, classes)
        times, pressed = [], {}
        for i in range(args.n):
            sid, loaded = drv.execute_script(js_face)
            while not loaded:
                time.sleep(0.01)
                sid, loaded = drv.execute_script(js_face)
            key = keys[sid]
            pressed[key if key in "kd" else "relabel"] = pressed.get(key if key in "kd" else "relabel", 0) + 1
            t = time.perf_counter()
            ActionChains(drv).send_keys(key).perform()
            if i < args.n - 1:
                while True:
                    nsid, loaded = drv.execute_script(js_face)
                    if nsid != sid and loaded:
                        break
                    time.sleep(0.005)
            else:
                while query(store, "SELECT count(*) FROM latest_verdicts WHERE source = 'human'")[1][0][0] < args.n:
                    time.sleep(0.02)
            times.append(time.perf_counter() - t)
        time.sleep(1.0)
        banner = drv.execute_script("return document.getElementById('audit-banner').textContent")
        RESULTS.mkdir(exist_ok=True)
        drv.execute_script("enqueue(() => move(-1))")  # show a decided face in the screenshot
        time.sleep(1.0)
        drv.save_screenshot(str(RESULTS / "review_app.png"))
    finally:
        drv.quit()
        srv.terminate()
        srv.wait(10)
    print(f"{args.n} decisions: median {statistics.median(times):.3f} s, mean {statistics.mean(times):.3f} s", flush=True)
    print("banner:", banner, flush=True)
    audited = {r[0] for r in query(store, "SELECT sample_id FROM latest_verdicts WHERE source = 'human'")[1]}
    after_audit = score(store)
    m = re.search(r"(ferclean curate .*)$", banner.strip())
    assert m, "the page did not show the re-run command"
    cmd = shlex.split(m.group(1))
    t = time.time()
    subprocess.run([sys.executable, "-m", "ferclean.cli", *cmd[1:]], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rerun_s = time.time() - t
    still = {r[0] for r in query(store, "SELECT sample_id FROM latest_verdicts WHERE source = 'human'")[1]}
    relabel_summary = json.loads((store.root / "stages" / "relabel.json").read_text()).get("summary", {})
    res = {
        "out": str(store.root), "n": args.n, "seed": args.seed, "keys": pressed,
        "seconds_per_decision": {"median": round(statistics.median(times), 3), "mean": round(statistics.mean(times), 3),
                                 "p90": round(float(np.percentile(times, 90)), 3), "max": round(max(times), 3)},
        "banner": banner.strip(), "rerun_command": m.group(1), "rerun_seconds": round(rerun_s, 1),
        "class_prior_after_rerun": relabel_summary.get("class_prior"),
        "human_decisions_kept_after_rerun": f"{len(still & audited)} of {len(audited)}",
        "before": before, "after_audit_before_rerun": after_audit, "after_rerun": score(store),
        "after_rerun_outside_audit": score(store, exclude=audited),
        "before_outside_audit": before_outside, "audit_ids_match_the_draw": audited == draw,
        "machine": f"{os.cpu_count()} CPUs, shared",
    }
    print(json.dumps(res, indent=1))
    if args.save:
        (RESULTS / args.save).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
