"""Server benchmark: a classroom of browser sessions on one real Streamlit server.

Starts ``streamlit run app.py`` on a free loopback port, opens N sessions in headless Chromium
(Debian's), and for R rounds has every session open the Saliency page on a different digit
at once (a new view each round, so every request computes). Printed:

- p50 and p95 seconds from navigation until the page has settled with all its maps loaded;
- views whose page showed another session's image (must be none) or an exception;
- the server's resident memory after the warm-up rounds and at the end (target: within 10%).

Run from the repository root:  .venv/bin/python benchmarks/server.py [--sessions 4] [--rounds 200]
   [--methods gradcam,gradcampp,...]
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
CAM_VIEW = "gradcam,gradcampp,xgradcam,layercam,hirescam,cam,eigencam,eigengradcam"
SETTLED = """(minimum) => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    const images = [...document.querySelectorAll('[data-testid="stImage"] img')];
    return images.length >= minimum && images.every(i => i.complete && i.naturalWidth > 0);
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none"]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    for _ in range(120):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as answer:
                if answer.read().strip() == b"ok":
                    return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("the Streamlit server did not start")


def resident_mb(server: subprocess.Popen) -> float:
    process = psutil.Process(server.pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--methods", default=CAM_VIEW)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    server = start_server(port)
    base = f"http://127.0.0.1:{port}"
    methods = args.methods.split(",")
    seconds: list[float] = []
    wrong = failed = 0
    warm = None
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            pages = [browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                     for _ in range(args.sessions)]
            for number in range(args.warmup + args.rounds):
                if number == args.warmup:
                    warm = resident_mb(server)
                views = [((number * args.sessions + k) % 10, (number + k) % 30) for k in range(args.sessions)]
                started = time.perf_counter()
                for page, (cls, index) in zip(pages, views):
                    page.goto(f"{base}/saliency?model=digits&source=dataset&split=test&cls={cls}&index={index}"
                              f"&block=B4&methods={','.join(methods)}", wait_until="commit")
                for page, (cls, index) in zip(pages, views):
                    try:
                        page.wait_for_function(SETTLED, arg=1 + len(methods), timeout=120_000, polling=50)
                    except Exception:  # noqa: BLE001 - counted and reported, the run goes on
                        failed += 1
                        continue
                    if number >= args.warmup:
                        seconds.append(time.perf_counter() - started)
                    text = page.locator('[data-testid="stMain"]').inner_text()
                    wrong += f"true class {cls}" not in text
                    failed += page.locator('[data-testid="stException"]').count() > 0
            browser.close()
        end = resident_mb(server)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    seconds.sort()
    p95 = seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))]
    print(f"{args.sessions} sessions x {args.rounds} rounds ({len(methods)} maps a view): "
          f"p50 {statistics.median(seconds):.2f} s, p95 {p95:.2f} s per settled page; "
          f"wrong image {wrong}, failed or exception {failed}; server memory after warm-up {warm:.0f} MB, "
          f"at the end {end:.0f} MB ({(end / warm - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
