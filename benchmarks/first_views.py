"""Every page's first view on a freshly started server: how long each takes to settle (its script has run
to the end) for the first visitor, who pays the server's imports and first loads, and for a second session.

Starts ``streamlit run app.py`` (a fresh process), then opens each page of the navigation with the default
model in headless Chromium, one new browser page (one new session) per page, in the navigation's order;
then all of them again in new sessions. Target: under 3 s each.

    .venv/bin/python benchmarks/first_views.py                  # every page, default model
    .venv/bin/python benchmarks/first_views.py --query model=digits

Needs Debian's Chromium (apt-get install chromium) and playwright (requirements-test.txt).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from first_paint import fresh_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PAGES = ["", "saliency", "clustercam", "segments", "prototypes", "concepts", "evaluation", "sanity"]
STATE = """() => { const app = document.querySelector('[data-testid="stApp"]');
  const main = document.querySelector('[data-testid="stMain"]');
  return {state: app ? app.getAttribute('data-test-script-state') : null,
          text: main ? main.innerText.trim().length : 0,
          error: !!document.querySelector('[data-testid="stException"]')}; }"""


def settle(browser, url: str, limit: float = 300) -> tuple[float, bool]:
    """Seconds from opening ``url`` in a new session until its script has run and stopped; whether it raised."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    start = time.monotonic()
    page.goto(url, wait_until="commit")
    running = False
    quiet_since = None
    while time.monotonic() - start < limit:
        probe = page.evaluate(STATE)
        running |= probe["state"] == "running"
        if running and probe["state"] == "notRunning" and probe["text"]:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 0.3:  # a rerun the page asks for starts within this
                break
        else:
            quiet_since = None
        time.sleep(0.05)
    seconds = (quiet_since or time.monotonic()) - start
    error = page.evaluate(STATE)["error"]
    page.close()
    return seconds, error


def first_views(query: str = "", chromium: str = "/usr/bin/chromium", rounds: int = 2, plain: bool = False,
                after: float = 0.0, browser=None) -> list[dict]:
    """Each page's settle time in ``rounds`` rounds of new sessions on one fresh server: started as ``make run``
    starts it (``python -m ui.serve``, warmed before the first visitor), or ``plain``: ``streamlit run app.py``.
    ``browser``: a Playwright browser already open (the browser test's), else one is launched."""
    start = ["-m", "streamlit", "run", "app.py"] if plain else ["-m", "ui.serve"]
    with fresh_server(start) as port:
        time.sleep(after)
        if browser is not None:
            return _rounds(browser, port, query, rounds)
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            launched = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
            try:
                return _rounds(launched, port, query, rounds)
            finally:
                launched.close()


def _rounds(browser, port: int, query: str, rounds: int) -> list[dict]:
    rows = []
    for round_ in range(rounds):
        for name in PAGES:
            url = f"http://127.0.0.1:{port}/{name}" + (f"?{query}" if query else "")
            seconds, error = settle(browser, url)
            rows.append({"page": name or "overview", "session": round_ + 1, "seconds": round(seconds, 2),
                         "exception": error})
            print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--query", default="", help="a link's query, e.g. model=digits")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plain", action="store_true", help="streamlit run app.py, not warmed (make run's before)")
    parser.add_argument("--after", type=float, default=0.0,
                        help="seconds between the server's start and the first visitor (a teacher starts it early)")
    args = parser.parse_args()
    found = first_views(args.query, rounds=args.rounds, plain=args.plain, after=args.after)
    print("\n| page | first session (s) | second session (s) |\n|---|---|---|")
    for name in PAGES:
        times = [r["seconds"] for r in found if r["page"] == (name or "overview")]
        print(f"| {name or 'overview'} | " + " | ".join(f"{t:.1f}" for t in times) + " |")
