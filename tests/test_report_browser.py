"""The report in a real headless Chromium: every <img> loads (naturalWidth > 0), page screenshots.

Needs Debian's chromium at /usr/bin/chromium (`apt-get install -y chromium`); skipped otherwise.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from ferclean.report import build_report
from ferclean.report.synthetic import make_demo_store

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium not installed at /usr/bin/chromium (apt-get install chromium)"
)

#: Appended to a copy of the report: after load, writes a verdict into the DOM for --dump-dom.
CHECK_SCRIPT = """
<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const out = document.createElement('pre');
  out.id = 'img-check';
  out.textContent = 'IMAGES total=' + imgs.length + ' broken=' + bad.length + ' [' + bad.join('|') + ']';
  document.body.appendChild(out);
});
</script>
"""


def _chromium(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.slow
def test_all_images_load_in_chromium_and_page_screenshots(tmp_path):
    store = make_demo_store(tmp_path / "out", n_samples=12)
    html = build_report(store).read_text()
    n_img = len(re.findall(r"<img\b", html))
    assert n_img > 5
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"))
    shot = tmp_path / "report.png"
    res = _chromium("--window-size=1200,3000", f"--screenshot={shot}", "--dump-dom", probe.as_uri())
    m = re.search(r"IMAGES total=(\d+) broken=(\d+) \[([^\]]*)\]", res.stdout)
    assert m, f"no check output from chromium: {res.stderr[-2000:]}"
    assert int(m.group(1)) == n_img
    assert int(m.group(2)) == 0, f"broken images: {m.group(3)}"
    assert shot.exists(), res.stderr[-2000:]
    im = Image.open(shot).convert("L")
    assert im.size == (1200, 3000)
    lo, hi = im.getextrema()
    assert hi - lo > 100  # the page rendered content, not a blank frame
