"""End-to-end: the dashboard in a real headless Chromium (Debian's ``chromium``, driven by playwright).

Starts ``streamlit run app/streamlit_app.py`` on a free loopback port over the run folders of
tests/test_app.py, opens every page, picks an example, switches head, and checks the expected
elements and that no exception box appears. Screenshots go to test-artifacts/screenshots/.
Skipped (with the reason) when chromium or playwright is missing. The helpers here are also
used by benchmarks/dashboard.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("ATTNEXPLAIN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


def browser_unavailable() -> str | None:
    """Why the browser test cannot run here (None when it can)."""
    if not Path(CHROMIUM).exists():
        return "chromium is not installed (as root: apt-get install -y chromium; scripts/test.sh does it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install 'attnexplain[test]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_app(runs_dir: Path, *, env: dict[str, str] | None = None, timeout: float = 60) -> Iterator[str]:
    """Run the dashboard on a free loopback port; yields its base URL; stops it afterwards."""
    port = free_port()
    full_env = {**os.environ, "ATTNEXPLAIN_RUNS_DIR": str(runs_dir), "HF_HUB_OFFLINE": "1", **(env or {})}
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "streamlit_app.py"),
           "--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--client.toolbarMode", "minimal"]  # as `attnexplain dashboard` starts it (DashboardArgs.command)
    log = open(runs_dir.parent / f"streamlit-{port}.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}; log: {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"streamlit did not start within {timeout} s; log: {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000):
    """A playwright page in Debian's Chromium (never ``playwright install``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def settled(page, *, plots: int = 0, timeout: float = 60, text: str | None = None) -> float:
    """Wait until the script finished, at least ``plots`` plotly figures are drawn, no skeleton is
    left (and ``text`` is on the page). Returns the seconds waited."""
    t0 = time.perf_counter()
    js = """([n, text]) => {
        const app = document.querySelector('[data-testid="stApp"]');
        if (!app) return false;
        if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
        if (document.querySelector('[data-testid="stSkeleton"]')) return false;
        if (document.querySelector('[data-stale="true"]')) return false;
        const drawn = Array.from(document.querySelectorAll('.js-plotly-plot')).filter(
            (gd) => gd.querySelector('.main-svg') && gd._fullLayout).length;
        if (drawn < n) return false;
        if (text && !document.body.innerText.includes(text)) return false;
        return true;
    }"""
    page.wait_for_function(js, arg=[plots, text], timeout=timeout * 1000, polling=50)
    return time.perf_counter() - t0


def open_select(page, label: str, search: str | None = None) -> None:
    """Open the drop-down of the Streamlit select box labelled ``label...`` (typing ``search`` to
    filter it: long option lists are virtualised, only the visible options exist in the page)."""
    box = page.locator('[data-testid="stSelectbox"]').filter(
        has=page.locator(f'input[role="combobox"][aria-label^="{label}"]')).first
    listbox = page.locator('[role="listbox"]')
    box.locator('input[role="combobox"]').click()
    if not listbox.first.is_visible():
        box.locator('button[aria-haspopup="listbox"]').click()
    listbox.first.wait_for(state="visible")
    if search:
        box.locator('input[role="combobox"]').fill(search)


def click_option(page, option: str, *, prefix: bool = False, timeout: float | None = None) -> None:
    pattern = re.compile("^" + re.escape(option) + ("" if prefix else "$"))
    page.locator('[role="option"]').filter(has_text=pattern).first.click(timeout=timeout)


def select_option(page, label: str, option: str, *, prefix: bool = False, attempts: int = 3) -> None:
    """Pick ``option`` (or the first option starting with it) in the select box labelled ``label...``.

    A rerun triggered by the previous widget can redraw the page while the drop-down is open (the
    option is detached under the cursor): then close it, let the app settle and open it again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(attempts):
        try:
            open_select(page, label, search=option.strip() if prefix else None)
            click_option(page, option, prefix=prefix, timeout=10_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            page.keyboard.press("Escape")
            settled(page)


def no_exception(page) -> None:
    boxes = page.locator('[data-testid="stException"]')
    assert boxes.count() == 0, boxes.first.inner_text()


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# ------------------------------------------------------------------------------------------
# the test
# ------------------------------------------------------------------------------------------

from test_app import runs_dir  # noqa: E402,F401  (the session fixture: run folders made once)


def nav(page, title: str) -> None:
    """Switch page through the sidebar link ``title`` (no browser reload, like a user)."""
    page.get_by_test_id("stSidebarNavLink").filter(has_text=re.compile(re.escape(title) + "$")).click()


def test_dashboard_in_chromium(runs_dir):  # noqa: F811
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    from attnexplain.runs import open_run

    run = open_run(runs_dir / "tiny-dense")
    second = run.stored_examples()[1]
    ex = run.examples()
    short = ex[(ex["n_tokens"] <= run.manifest["head_dim"]) & ex["example_id"].isin(run.stored_examples())]
    short = short["example_id"].iloc[0]
    with streamlit_app(runs_dir, env={"ATTNEXPLAIN_LIVE_MODELS": "tiny-bert"}) as url, \
            browser_page(height=2200) as page:
        outside: list[str] = []  # requests to any host but the dashboard's (fonts, CDNs...)
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "data:", "blob:")) else None)

        # a short example (n <= d_head): the page says effective attention is raw attention; the maps
        # have titled, labelled axes; the shaded tokens have a legend
        page.goto(f"{url}/explorer?run=tiny-dense&example={short}")
        settled(page, plots=3, text="effective attention is raw attention")
        no_exception(page)
        assert page.locator(".ax-legend").count() >= 1
        titles = page.eval_on_selector_all(".js-plotly-plot .xtitle, .js-plotly-plot .ytitle",
                                           "els => els.map(e => e.textContent)")
        assert "query" in titles and "key" in titles, titles
        assert page.locator(".js-plotly-plot .xtick text").count() >= int(
            ex.loc[ex["example_id"] == short, "n_tokens"].iloc[0])  # every token labelled
        shot(page, "explorer-short")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.locator(".js-plotly-plot").last.screenshot(path=str(SCREENSHOTS / "head-short.png"))
        assert page.get_by_role("button", name="Deploy").count() == 0  # toolbarMode minimal
        # a run path outside RUNS_DIR in the URL is refused; the page stays usable
        page.goto(f"{url}/explorer?run=..%2F..%2Fetc")
        settled(page, plots=3, text="Refused")
        no_exception(page)
        # run names and example ids from the URL are shown as text: no outside image, no link
        from urllib.parse import quote

        image, link = "![x](http://example.invalid/x.png)", "[click](http://example.invalid)"
        for query, text in ((f"run={quote(image, safe='')}", "cannot be read"),
                            (f"run={quote(link, safe='')}", "cannot be read"),
                            (f"run=tiny-dense&example={quote(image, safe='')}", "is not in run"),
                            (f"run=tiny-dense&example={quote(link, safe='')}", "is not in run")):
            page.goto(f"{url}/explorer?{query}")
            settled(page, plots=3, text=text)
            no_exception(page)
            leaks = page.eval_on_selector_all('[href*="example.invalid"], [src*="example.invalid"]',
                                              "els => els.map(e => e.outerHTML.slice(0, 300))")
            assert not leaks, (query, leaks)
            body = page.locator("body").inner_text().replace("\u2060", "")  # word joiners break autolinks
            assert (image if "x.png" in query else link) in body, query  # shown literally
        # the Runs page has its own URL too (it is also the default page at /)
        page.goto(f"{url}/runs")
        settled(page, text="Select one run")
        no_exception(page)
        assert "Page not found" not in page.locator("body").inner_text()
        page.goto(f"{url}/explorer?run=tiny-dense&example={short}")
        settled(page, plots=3, text="effective attention is raw attention")

        # Explorer: pick a run and an example, switch head, open the other tab
        select_option(page, "Run", "tiny-dense")
        settled(page, plots=3, text="One head, large")  # probabilities, layer x head grid, one head
        select_option(page, "Example", f"{second} ", prefix=True)
        settled(page, plots=3, text=f"Example {second}")
        no_exception(page)
        assert page.locator(".ax-tokens span").count() > 3
        select_option(page, "Head", "2")
        settled(page, plots=3, text="layer 1, head 2")
        no_exception(page)
        assert page.locator(".modebar-btn").count() > 0  # plotly modebar (PNG / SVG camera button)
        assert page.get_by_role("button", name="HTML").count() >= 3
        assert page.get_by_role("button", name="CSV").count() >= 3
        shot(page, "explorer")
        page.get_by_role("tab", name="Across layers").click()
        settled(page, plots=3, text="attention rollout")  # probabilities, norm, rollout
        no_exception(page)

        # a 300-token example: pooled with a note; markup in tokens shown as text
        select_option(page, "Run", "synthetic")
        page.get_by_role("tab", name="Heads").click()
        settled(page, plots=3, text="mean-pooled")
        no_exception(page)
        assert "<b>bold</b>" in page.locator(".ax-tokens").first.inner_text()
        assert page.locator(".ax-tokens b").count() == 0
        # no stale ?example= warning once the run switch has settled (the page may show it for a
        # moment, between the switch and the rerun that drops the old example from the URL)
        warn = page.locator('[data-testid="stAlertContentWarning"]')
        deadline = time.monotonic() + 15
        while warn.count() and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        assert warn.count() == 0, warn.all_inner_texts()
        shot(page, "explorer-long")

        # Runs: a table of the readable runs, an error per broken run
        nav(page, "Runs")
        settled(page, text="Select one run")
        no_exception(page)
        assert page.locator('[data-testid="stDataFrame"]').count() >= 1
        errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
        assert any("old-run" in e for e in errors) and any("missing-files" in e for e in errors), errors
        shot(page, "runs")

        # Ablations
        nav(page, "Ablations")
        settled(page, plots=3, text="Head ablation")
        no_exception(page)
        assert page.get_by_text("Top-k key sweeps").count() == 0  # no command fills such a section
        shot(page, "ablations")

        # Dense vs efficient
        nav(page, "Dense vs efficient")
        settled(page, text="Run B")
        select_option(page, "Run A", "tiny-dense")
        settled(page, text="Run B")
        select_option(page, "Run B", "tiny-performer")
        settled(page, plots=2, text="prediction agreement")
        no_exception(page)
        shot(page, "compare")

        # Live, with the tiny model
        nav(page, "Live")
        settled(page, text="press Explain")
        select_option(page, "Model", "tiny-bert")
        page.get_by_role("button", name="Explain").click()
        settled(page, plots=3, text="One head, large", timeout=90)
        no_exception(page)
        shot(page, "live")
        assert not outside, outside[:5]


#: the Live page must answer a 600-word text within this many seconds (tiny model, loaded CI machine)
LIVE_LONG_TEXT_SECONDS = 60


def test_live_page_with_a_600_word_text(runs_dir):  # noqa: F811
    """A 600-word text on the Live page: the truncation note and the views within a time bound."""
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)
    text = " ".join(["the film was long but witty and moving"] * 75)  # 600 words
    assert len(text.split()) == 600
    with streamlit_app(runs_dir, env={"ATTNEXPLAIN_LIVE_MODELS": "tiny-bert"}) as url, browser_page(height=2200) as page:
        page.goto(f"{url}/live")
        settled(page, text="press Explain")
        select_option(page, "Model", "tiny-bert")
        page.get_by_label("Text", exact=True).fill(text)
        t0 = time.perf_counter()
        page.get_by_role("button", name="Explain").click()
        settled(page, plots=3, text="One head, large", timeout=LIVE_LONG_TEXT_SECONDS)
        seconds = time.perf_counter() - t0
        no_exception(page)
        body = page.locator("body").inner_text()
        assert "was truncated to" in body and "tokens are not explained" in body
        assert seconds < LIVE_LONG_TEXT_SECONDS
        shot(page, "live-600-words")
