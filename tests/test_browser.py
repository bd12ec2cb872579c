"""End-to-end test: the real Streamlit app in headless Chromium (Debian's).

Starts `streamlit run app.py` on a free loopback port, opens each page in
PAGES, waits until the script has finished running, checks the page and saves
a full-page screenshot to docs/screenshots/<name>.png.

Add a page: append Page(url_path, name, check) to PAGES.
Debug aids: the server log and a screenshot of a failing page go to
tests/artifacts/. PROTOSCOPE_APP=/path/to/app.py points the test at another app
(used only while developing the test); CHROMIUM=/path overrides the browser.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, NamedTuple

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "docs" / "screenshots"
ARTIFACTS = REPO / "tests" / "artifacts"

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]
VIEWPORT = {"width": 1600, "height": 1000}
SERVER_START_S = 60  # until /_stcore/health answers "ok"
PAGE_IDLE_MS = 120_000  # a first run loads a torch model
MISSING_CHROMIUM = "Chromium not found: apt-get install chromium, or run .ci/run"


# ---------------------------------------------------------------- page checks

def check_no_exception(page) -> None:
    n = page.locator('[data-testid="stException"]').count()
    if n:
        text = page.locator('[data-testid="stException"]').first.inner_text()
        pytest.fail(f"{n} exception(s) shown on the page; first:\n{text}")


def check_overview(page) -> None:
    check_no_exception(page)
    heading = page.locator('[data-testid="stMain"]').locator("h1, h2, h3").first
    heading.wait_for(state="visible", timeout=10_000)
    assert heading.inner_text().strip(), "Overview heading is empty"
    # The model card and the method table, rendered (a screenshot taken earlier shows empty placeholders).
    page.locator('[data-testid="stTable"] td').first.wait_for(state="visible", timeout=60_000)


def check_saliency(page) -> None:
    check_no_exception(page)
    # Opened first, by a deep link on a fresh server: the shared sidebar must be there too.
    page.locator('[data-testid="stSidebar"] [data-testid="stRadio"]').first.wait_for(state="visible", timeout=60_000)
    check_images_loaded(page, minimum=9)  # the input and the eight default method panels
    text = page.locator('[data-testid="stMain"]').inner_text()  # the default view: Lite0 on the cat photo
    assert "chelsea (scikit-image), ImageNet class tabby" in text, f"not the cat photo:\n{text[:600]}"
    predicted = text.split("Predicted", 1)[1].strip().splitlines()[0]
    assert any(cat in predicted for cat in CATS), f"the prediction is not a cat: {predicted!r}"


def check_segments(page) -> None:
    check_no_exception(page)
    check_images_loaded(page, minimum=3)  # segments, attribution, at least one framed patch
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(state="visible", timeout=60_000)  # class counts


CATS = ("tabby", "tiger cat", "Egyptian cat")


def check_marked(page) -> None:
    """The digits_marked model on a training 0 (its mark top left): Grad-CAM and Grad-CAM++ at B2 of the
    prediction, 0, light up the mark (at B4 the maps cannot: tests/test_marked.py)."""
    check_no_exception(page)
    check_images_loaded(page, minimum=3)  # the input, the Grad-CAM and the Grad-CAM++ panels
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "digits_marked train" in text and "true class 0, mark of class 0" in text, f"not the marked 0:\n{text[:600]}"
    predicted = text.split("Predicted", 1)[1].strip().splitlines()[0]
    assert predicted.startswith("0"), f"the marked model does not predict 0: {predicted!r}"


def check_opens_on_the_cat(page) -> None:
    """The app's first view: the built-in ImageNet model on the cat photo, and a cat as its top-1."""
    check_overview(page)
    main = page.locator('[data-testid="stMain"]').inner_text()
    assert "Model: efficientnet_lite0" in main, f"not on Lite0:\n{main[:600]}"
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Top-5 prediction").wait_for(state="visible", timeout=60_000)
    first = sidebar.inner_text().split("Top-5 prediction", 1)[1].strip().splitlines()[0]
    assert any(cat in first for cat in CATS), f"top-1 is not a cat: {first!r}"  # the photo: check_saliency


def check_prototypes(page) -> None:
    check_no_exception(page)
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(state="visible", timeout=60_000)
    try:  # a busy machine draws the tables some seconds after the chart
        page.locator('[data-testid="stDataFrame"]').nth(1).wait_for(state="attached", timeout=60_000)
    except Exception:
        pytest.fail("Tables 1 and 2 are missing")


def check_clustercam(page) -> None:
    check_no_exception(page)
    check_images_loaded(page, minimum=6 + 6 + 2)  # Q maps, Q masked inputs, Cluster-CAM / Grad-CAM (Score-CAM: asked)
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "base" in text and "scissors" in text, "the base and the scissors are not named"


def run_on_request(page, label: str) -> None:
    """The page's first view computes nothing (issue 21: it opens in seconds): no figure yet, a line on what a
    run will compute and its Run button, which is pressed here."""
    assert not page.locator('[data-testid="stPlotlyChart"]').count(), "the first view computed before Run"
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert label in text and "Nothing is computed until you press it" in text, text[:600]
    button = page.get_by_role("button", name=label)
    button.click()
    button.wait_for(state="detached", timeout=PAGE_IDLE_MS)  # asked for: the run draws the result, no button
    wait_idle(page)


def check_evaluation(page) -> None:
    check_no_exception(page)
    run_on_request(page, "Run the evaluation")
    check_no_exception(page)
    page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for(state="visible", timeout=60_000)  # both figures
    try:  # confidence, AUC, ROAD and cost tables
        page.locator('[data-testid="stDataFrame"]').nth(3).wait_for(state="attached", timeout=60_000)
    except Exception:
        pytest.fail("the four tables are missing")
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "Cluster-CAM" in text and "distinct perturbed inputs" in text, text[:600]
def check_concepts(page) -> None:
    check_no_exception(page)
    page.locator('[data-testid="stDataFrame"]').first.wait_for(state="attached", timeout=60_000)  # Table 1
    page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for(state="visible", timeout=60_000)  # matrix, bars
    check_images_loaded(page, minimum=7)  # a feature's map and its six gallery images at least
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "Q-SENN predicts" in text and "of the logit's evidence" in text, text[:600]


def check_marked_overview(page) -> None:
    """digits_marked's card: accuracy without a mark and with random ones, and what the gap means."""
    check_overview(page)
    text = page.locator('[data-testid="stMain"]').inner_text()
    for expected in ("Model: digits_marked", "Test accuracy, no mark", "85.6%", "Test accuracy, random marks", "22.8%",
                     "learned the mark"):
        assert expected in text, f"{expected!r} is not on the page:\n{text[:800]}"


def check_marked_concepts(page) -> None:
    """digits_marked's Concepts page from its shipped layer: dense against Q-SENN on both test splits."""
    check_concepts(page)
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "Dense, test_clean" in text and "Q-SENN, test_clean" in text, text[:800]


def check_sanity(page) -> None:
    check_no_exception(page)
    run_on_request(page, "Run the check")
    check_no_exception(page)
    check_images_loaded(page, minimum=4 * 7)  # four methods, a map for each of the seven steps
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(state="visible", timeout=60_000)  # the curves
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "Spectral residual does not depend on the model's weights" in text, "the image-only method is not flagged"


def check_vit_saliency(page) -> None:
    check_no_exception(page)
    check_images_loaded(page, minimum=7)  # the input and six panels: Grad-CAM, LeGrad, rollout, Chefer, TEXTSPAN, CHILI
    text = page.locator('[data-testid="stMain"]').inner_text()
    for label in ("LeGrad", "TEXTSPAN", "CHILI"):
        assert label in text, f"no {label} panel on digits_vit:\n{text[:800]}"


def check_heads(page) -> None:
    check_no_exception(page)
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(state="visible", timeout=60_000)
    assert "head" in page.locator('[data-testid="stMain"]').inner_text().lower()


def check_compare(page) -> None:
    check_no_exception(page)
    check_images_loaded(page, minimum=4)  # each model's input and at least one map each
    text = page.locator('[data-testid="stMain"]').inner_text()
    assert "digits_vit" in text and "digits" in text, text[:600]


def check_images_loaded(page, minimum: int) -> None:
    """At least ``minimum`` images shown, every one loaded from the media endpoint (a busy
    machine renders the page's elements some seconds after the script finished)."""
    try:
        page.wait_for_function(
            """(minimum) => {
                 const images = [...document.querySelectorAll('[data-testid="stImage"] img')];
                 return images.length >= minimum && images.every(i => i.complete && i.naturalWidth > 0);
               }""",
            arg=minimum, timeout=60_000,
        )
    except Exception:
        n = page.locator('[data-testid="stImage"] img').count()
        pytest.fail(f"expected at least {minimum} loaded images, found {n}")


class Page(NamedTuple):
    path: str  # url path after the base URL ("" = default page)
    name: str  # screenshot name and test id
    check: Callable


PAGES = [
    Page("saliency?block=B4", "saliency", check_saliency),  # first: a deep link on a fresh server
    Page("", "overview", check_opens_on_the_cat),  # the default view: efficientnet_lite0 on the cat photo
    Page("clustercam?model=digits", "clustercam", check_clustercam),
    Page("segments?model=digits&figure1=1", "segments", check_segments),
    Page("prototypes?model=digits", "prototypes", check_prototypes),
    Page("evaluation?model=digits&methods=gradcam,scorecam,clustercam", "evaluation", check_evaluation),
    Page("concepts?model=digits", "concepts", check_concepts),
    Page("sanity?methods=gradcam,gradcampp,eigencam,spectral_residual", "sanity", check_sanity),  # Lite0, the cat
    # The model that learned the mark (issue 14): Grad-CAM on a training image lights up the mark.
    Page("saliency?model=digits_marked&source=dataset&split=train&cls=0&index=0&block=B2&methods=gradcam,gradcampp",
         "marked", check_marked),
    Page("?model=digits_marked", "marked_overview", check_marked_overview),
    Page("concepts?model=digits_marked&source=dataset&split=test&cls=3&index=0", "marked_concepts",
         check_marked_concepts),
    # Vision transformers (issue 20): the built-in ViT's attention and decomposition maps, its heads, and a CNN
    # beside it.
    Page("saliency?model=digits_vit&block=B4&methods=gradcam,legrad,rollout,chefer,textspan,chili", "vit_saliency",
         check_vit_saliency),
    Page("heads?model=digits_vit", "heads", check_heads),
    Page("compare?model=digits", "compare", check_compare),
]


# ------------------------------------------------------------------- helpers

def _need(msg: str) -> None:
    """Missing prerequisite: skip locally, fail in CI."""
    if os.environ.get("CI"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def find_chromium() -> str | None:
    override = os.environ.get("CHROMIUM")  # if set, it is the only candidate
    for cand in [override] if override else ["/usr/bin/chromium", shutil.which("chromium")]:
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def wait_idle(page, timeout_ms: int = PAGE_IDLE_MS) -> None:
    """Wait until Streamlit has run the script to the end and shows no 'Running'."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            if (!app) return false;
            const state = app.getAttribute('data-test-script-state');
            if (state !== 'notRunning' && state !== 'compilationError') return false;
            const w = document.querySelector('[data-testid="stStatusWidget"]');
            return !(w && /Running/i.test(w.innerText + ' ' +
                     (w.querySelector('[aria-label]')?.getAttribute('aria-label') ?? '')));
        }""",
        timeout=timeout_ms,
        polling=250,
    )


def full_page_screenshot(page, path: Path) -> None:
    """Screenshot of all content: Streamlit scrolls inside its own container,
    so grow the viewport to the content height first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height = page.evaluate(
        """() => Math.max(document.documentElement.scrollHeight,
             ...[...document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"]')]
                 .map(e => e.scrollHeight))"""
    )
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(max(height, VIEWPORT["height"]), 12_000)})
    page.wait_for_timeout(300)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def streamlit_url():
    app = Path(os.environ.get("PROTOSCOPE_APP") or REPO / "app.py").resolve()
    if not app.is_file():
        pytest.fail(f"app not found: {app}", pytrace=False)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / "streamlit.log"
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(app),
        "--server.headless", "true", "--server.port", str(port), "--server.fileWatcherType", "none",
        "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO if app.parent == REPO else app.parent,
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{_log_tail(log)}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit not healthy after {SERVER_START_S}s:\n{_log_tail(log)}", pytrace=False)
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # our own session: streamlit and its children
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="session")
def browser():
    chromium = find_chromium()
    if chromium is None:
        _need(MISSING_CHROMIUM)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright not installed: pip install -r requirements-test.txt (make test does)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


# --------------------------------------------------------------------- tests

@pytest.mark.parametrize("spec", PAGES, ids=[p.name for p in PAGES])
def test_page_renders(browser, streamlit_url, page, spec: Page):
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{streamlit_url}/{spec.path}", wait_until="load", timeout=60_000)
        page.locator('[data-testid="stApp"]').wait_for(timeout=60_000)
        wait_idle(page)
        spec.check(page)
    except BaseException:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{spec.name}-failure.png"), full_page=True)
        if errors:
            print("page errors:", *errors, sep="\n  ")
        raise
    full_page_screenshot(page, SCREENSHOTS / f"{spec.name}.png")


# Four students at once, each with a view of their own (digits: class, block and methods differ).
CLASSROOM = [
    ("3", "B3", ["scorecam", "gradcam"]),
    ("7", "B4", ["gradcam", "eigencam", "cam"]),
    ("1", "B2", ["scorecam", "layercam"]),
    ("9", "B4", ["lrp_epsilon", "gradcampp"]),
]
LABELS = {"scorecam": "Score-CAM", "gradcam": "Grad-CAM", "eigencam": "Eigen-CAM", "cam": "CAM",
          "layercam": "LayerCAM", "lrp_epsilon": "LRP-ε", "gradcampp": "Grad-CAM++"}


def test_four_sessions_at_once_each_see_their_own_view(browser, streamlit_url):
    """Four browser sessions open the Saliency page at the same moment, with different views; each page
    must show its own image, depth and methods, and every map it asked for."""
    contexts = [browser.new_context(viewport=VIEWPORT) for _ in CLASSROOM]
    try:
        pages = [context.new_page() for context in contexts]
        for page, (cls, block, chosen) in zip(pages, CLASSROOM):  # all four requests go out before any is read
            page.goto(f"{streamlit_url}/saliency?model=digits&source=dataset&split=test&cls={cls}&index=0"
                      f"&block={block}&methods={','.join(chosen)}", wait_until="commit", timeout=60_000)
        for number, (page, (cls, block, chosen)) in enumerate(zip(pages, CLASSROOM)):
            try:
                page.locator('[data-testid="stApp"]').wait_for(timeout=60_000)
                wait_idle(page)
                check_no_exception(page)
                check_images_loaded(page, minimum=1 + len(chosen))
                text = page.locator('[data-testid="stMain"]').inner_text()
                assert f"true class {cls}" in text, f"session {number} shows another image:\n{text[:400]}"
                assert f"at {block}" in text, f"session {number} shows another depth"
                shown = [LABELS[m] for m in chosen]
                assert all(label in text for label in shown), f"session {number} misses one of {shown}"
                others = {LABELS[m] for _, _, c in CLASSROOM for m in c} - set(shown)
                panels = page.locator('[data-testid="stMain"] [data-testid="stMarkdownContainer"] strong')
                labels = {panels.nth(i).inner_text().strip() for i in range(panels.count())}
                assert not labels & others, f"session {number} shows another session's methods: {labels & others}"
            except BaseException:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"classroom-{number}-failure.png"), full_page=True)
                raise
    finally:
        for context in contexts:
            context.close()


# Every page's first view on a fresh server (issue 21): benchmarks/first_views.py's measurement, kept.
FIRST_VIEW_TARGET_S = 3.0


def test_every_page_first_view_is_timed_on_a_fresh_server(browser):
    """Each page of the navigation with the default model, a new session each, on a server started as ``make run``
    starts it, then again in second sessions: no page raises, each settles, and the times are written to
    tests/artifacts/first_views.json with the target (under 3 s) beside them. The target is reported, not
    asserted: a shared CI machine's load decides seconds; benchmarks/first_views.py prints the same table."""
    import json

    sys.path.insert(0, str(REPO / "benchmarks"))
    from first_views import PAGES as VIEWS
    from first_views import first_views

    rows = first_views(rounds=2, browser=browser)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "first_views.json").write_text(json.dumps({"target_s": FIRST_VIEW_TARGET_S, "views": rows}, indent=1))
    assert len(rows) == 2 * len(VIEWS)
    assert not [r for r in rows if r["exception"]], rows
    assert all(r["seconds"] < PAGE_IDLE_MS / 1000 for r in rows), rows
    slow = [r for r in rows if r["seconds"] >= FIRST_VIEW_TARGET_S]
    print("first views:", *rows, f"over {FIRST_VIEW_TARGET_S} s: {len(slow)}", sep="\n  ")
