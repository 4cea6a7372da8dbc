"""`workbench ui` in a real browser: start the command headless on a loopback port, drive it
with Selenium and Debian's chromium, apply an edit through the Edit page, wait for the
plotly chart, save a screenshot, and check the chart drew the metrics moving.

Skipped cleanly where chromium, its driver or selenium is missing; `.ci/run` installs
them, so CI runs it. Set WORKBENCH_UI_SCREENSHOT=path to keep the screenshot.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                                reason="chromium and chromium-driver are not installed (apt-get install chromium "
                                       "chromium-driver; .ci/run does it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`workbench ui` as a user starts it; yields its URL; stopped (its whole process group)
    at the end."""
    port = _free_port()
    log = open(tmp_path / "ui.log", "w")
    # the installed console script, as in the README; `python -m workbench.cli.main` is the same main()
    exe = [shutil.which("workbench")] if shutil.which("workbench") else [sys.executable, "-m", "workbench.cli"]
    proc = subprocess.Popen([*exe, "ui", "--port", str(port),
                             "--workspace", str(tmp_path / "ws")], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group: Streamlit's child goes with it
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError("workbench ui did not come up:\n" + (tmp_path / "ui.log").read_text())
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def test_edit_in_the_browser_draws_the_chart(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    # The server binds loopback only.
    assert "127.0.0.1" in server
    wait = WebDriverWait(browser, 180)
    browser.get(server + "/edit")
    # The composed default request: make "Wymkeark Holviol" a citizen of Kelmoria; editor GRACE.
    apply = wait.until(EC.element_to_be_clickable((By.XPATH, "//button[.//p[text()='Apply edit']]")))
    assert "GRACE codebook" in browser.find_element(By.TAG_NAME, "body").text  # the chosen editor's summary
    apply.click()
    chart = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".js-plotly-plot .main-svg")))
    success = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stAlertContentSuccess']")))
    assert "e0001 is in force" in success.text

    traces = browser.execute_script(
        "return Array.from(document.querySelectorAll('.js-plotly-plot'))"
        ".map(e => (e.data || []).map(t => ({name: t.name, x: t.x, y: t.y})))")
    bars = {t["name"]: dict(zip(t["x"], t["y"])) for t in traces[0]}
    assert set(bars) == {"before", "after"}
    assert bars["before"]["reliability"] < 0.5 < bars["after"]["reliability"]
    assert bars["after"]["locality"] == pytest.approx(1.0)
    # the chart is really drawn: plotly rendered one SVG rect per bar
    assert len(chart.find_elements(By.CSS_SELECTOR, "g.point")) >= 4

    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)
    shot = Path(os.environ.get("WORKBENCH_UI_SCREENSHOT") or tmp_path / "edit.png")
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_the_audit_report_opens_offline_with_its_charts_drawn(browser, tmp_path):
    # a plan of 100 edits by three editors with a gate, a tag, an export and a bundle (the issue's
    # shape, with fast editors), then its report: plotly is inline, so a file:// page draws it
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    from workbench.editing.plan import load_plan, run_plan
    from workbench.editing.report import write_report
    from workbench.editing.session import Workbench
    from workbench.eval.requests import dump_requests
    from workbench.eval.requests import load_requests
    from .conftest import REPO
    from . import session_helpers  # noqa: F401 (registers the fast test editors)
    dump_requests(tmp_path / "edits.jsonl",
                  load_requests(REPO / "data" / "benchmarks" / "edits_counterfactual.jsonl")[:100])
    (tmp_path / "plan.toml").write_text(
        '[[step]]\naction = "edit"\neditor = "test-bump"\nrequests = "edits.jsonl"\ncount = 50\n'
        'gate = "locality>=0.5"\n'
        '[[step]]\naction = "edit"\neditor = "test-one"\nrequests = "edits.jsonl"\nstart = 50\ncount = 40\n'
        'params = { layer = 2 }\n'
        '[[step]]\naction = "edit"\neditor = "ft"\nrequests = "edits.jsonl"\nstart = 90\none_by_one = true\n'
        'params = { steps = 1 }\n'
        '[[step]]\naction = "tag"\nname = "v1"\n[[step]]\naction = "export"\nout = "exported"\n'
        '[[step]]\naction = "bundle"\nout = "h.wbbundle"\n')
    wb = Workbench(None, tmp_path / "ws")
    run_plan(wb, load_plan(tmp_path / "plan.toml"))
    assert sum(len(e.requests or []) for e in wb.log() if e.kind == "edit") == 100  # 50 + 40 + 10 requests
    wb.undo()
    out = write_report(wb, tmp_path / "report.html")
    browser.get(out.as_uri())
    WebDriverWait(browser, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#fig2 .main-svg")))
    figs = browser.execute_script("return Array.from(document.querySelectorAll('.js-plotly-plot'))"
                                  ".map(e => ({id: e.id, traces: (e.data || []).length}))")
    assert [f["id"] for f in figs] == ["fig0", "fig1", "fig2"] and all(f["traces"] for f in figs)
    # the per-layer map of weight changes has a row per applied edit (1 + 40 + 10), the undone one marked
    rows = browser.execute_script("return document.getElementById('fig2').data[0].y")
    assert len(rows) == 51 and rows[-1].endswith("(reverted)")
    # every event is there, in full
    assert len(browser.find_elements(By.CSS_SELECTOR, "details")) == len(wb.log()) == 53  # 51 edits, tag, undo
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "intact: 53 events" in body and "v1 → e0051" in body
    assert (tmp_path / "exported" / "workbench_edits.json").is_file() and (tmp_path / "h.wbbundle").is_file()
