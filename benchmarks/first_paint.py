"""What a classroom sees first: a shared link opened on a freshly started server.

Starts ``streamlit run app.py`` (a fresh process: nothing imported, nothing cached), opens one link in
headless Chromium and samples the page every 50 ms until the script has finished: when the sidebar
first shows page links, whether they were ever Streamlit's raw file names (``app``, ``clustercam``)
instead of the titles, when the main area first shows text, and when the page is complete.

    .venv/bin/python benchmarks/first_paint.py                     # /saliency?model=digits&block=B3
    .venv/bin/python benchmarks/first_paint.py / "saliency?block=B2"  # any links, one fresh server each

Needs Debian's Chromium (apt-get install chromium) and playwright (requirements-test.txt).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
RAW_NAMES = {"app", "clustercam", "overview", "saliency", "segments", "prototypes", "concepts", "evaluation", "sanity"}
TITLES = {"Overview", "Saliency", "Cluster-CAM", "Segments", "Prototypes", "Concepts", "Evaluation", "Sanity checks"}
PROBE = """() => {
  const links = [...document.querySelectorAll('[data-testid="stSidebarNavLink"]')].map(a => a.innerText.trim().split('\\n').pop().trim());
  const main = document.querySelector('[data-testid="stMain"]');
  const text = main ? main.innerText.trim() : '';
  const app = document.querySelector('[data-testid="stApp"]');
  return {links, text: text.slice(0, 200), state: app ? app.getAttribute('data-test-script-state') : null};
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fresh_server(start: list[str]) -> Iterator[int]:
    """A fresh Streamlit server (``python <start>``, e.g. ``-m ui.serve``) on a free port, yielded once it
    answers its health check; stopped (its whole process group) afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, *start, "--server.headless", "true", "--server.port", str(port),
         "--server.fileWatcherType", "none", "--server.address", "127.0.0.1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def measure(link: str, chromium: str = "/usr/bin/chromium") -> dict:
    from playwright.sync_api import sync_playwright

    with fresh_server(["-m", "streamlit", "run", "app.py"]) as port:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            start = time.monotonic()
            page.goto(f"http://127.0.0.1:{port}/{link.lstrip('/')}", wait_until="commit")
            found: dict = {"raw names seen": False}
            seen_running = False
            while time.monotonic() - start < 180:
                now = time.monotonic() - start
                probe = page.evaluate(PROBE)
                links = set(probe["links"])
                if links & RAW_NAMES - TITLES and not links & TITLES:
                    found["raw names seen"] = True
                    found.setdefault("raw names at s", round(now, 2))
                if links & TITLES:
                    found.setdefault("page titles at s", round(now, 2))
                if probe["text"]:
                    found.setdefault("first text at s", round(now, 2))
                    found.setdefault("first text", probe["text"].splitlines()[0][:80])
                seen_running |= probe["state"] == "running"
                if seen_running and probe["state"] == "notRunning" and "page titles at s" in found:
                    found["complete at s"] = round(now, 2)
                    break
                time.sleep(0.05)
            browser.close()
        return found


if __name__ == "__main__":
    for link in sys.argv[1:] or ["saliency?model=digits&block=B3"]:
        print(link, measure(link), flush=True)
