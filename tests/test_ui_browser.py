"""`workbench ui` in a real browser: start the command headless on a loopback port and drive it
with Selenium and Debian's chromium through every page as a new user would (see
`test_a_tour_of_every_page`), checking what the charts drew; and the HTML audit report opened
from a file.

Skipped cleanly where chromium, its driver or selenium is missing; `.ci/run` installs
them, so CI runs it. Set WORKBENCH_UI_SCREENSHOTS=folder to keep a screenshot of each page.
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
from selenium.webdriver.common.by import By  # noqa: E402 (after the skip)
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                                reason="chromium and chromium-driver are not installed (apt-get install chromium "
                                       "chromium-driver; .ci/run does it)")


# the installed console script, as in the README; `python -m workbench.cli` is the same main()
WORKBENCH = [shutil.which("workbench")] if shutil.which("workbench") else [sys.executable, "-m", "workbench.cli"]


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
    proc = subprocess.Popen([*WORKBENCH, "ui", "--port", str(port),
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


class Page:
    """A Streamlit page driven the way a person does: type into a labelled box, click a button by
    its text, pick from a select box, and wait until the script has finished running."""

    def __init__(self, browser, url: str, shots: Path):
        from selenium.webdriver.support.ui import WebDriverWait
        self.b, self.url, self.shots = browser, url, shots
        self.wait = WebDriverWait(browser, 240)

    def idle(self):
        time.sleep(0.5)  # the rerun a click or an Enter starts may not have begun yet
        self.wait.until(lambda b: b.execute_script(
            "const e = document.querySelector('[data-test-script-state]');"
            "return e && e.getAttribute('data-test-script-state') === 'notRunning'"))

    def open(self, page: str, session: str | None = None):
        self.b.get(f"{self.url}/{page}" + (f"?session={session}" if session else ""))
        self.wait.until(lambda b: b.find_elements(By.TAG_NAME, "h1"))
        self.idle()
        return self

    def type(self, label: str, text: str):
        box = self.b.find_element(By.CSS_SELECTOR, f"input[aria-label='{label}']")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text, Keys.ENTER)
        self.idle()

    def click(self, text: str):
        button = self.wait.until(EC.element_to_be_clickable((By.XPATH, f"//button[.//p[text()='{text}']]")))
        self.b.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
        button.click()
        self.idle()

    def pick(self, label: str, option: str):
        box = self.b.find_element(By.CSS_SELECTOR, f"input[role='combobox'][aria-label='{label}']")
        self.b.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
        box.click()
        self.wait.until(lambda b: [o for o in b.find_elements(By.CSS_SELECTOR, "[role='option']")
                                   if o.text == option])[0].click()
        self.idle()

    def alerts(self, kind: str) -> list[str]:
        return [e.text for e in self.b.find_elements(By.CSS_SELECTOR, f"[data-testid='stAlertContent{kind}']")]

    def body(self) -> str:
        return self.b.find_element(By.TAG_NAME, "body").text

    def charts(self) -> list[list[dict]]:
        return self.b.execute_script(
            "return Array.from(document.querySelectorAll('.js-plotly-plot'))"
            ".map(e => (e.data || []).map(t => ({name: t.name, x: t.x, y: t.y, text: t.text})))")

    def shot(self, name: str, scroll_to=None):
        if scroll_to is not None:
            self.b.execute_script("arguments[0].scrollIntoView({block: 'start'})", scroll_to)
        path = self.shots / f"{name}.png"
        assert self.b.save_screenshot(str(path)) and path.stat().st_size > 10_000
        return path


def test_a_tour_of_every_page(server, browser, tmp_path):
    """A new user's session in the browser: a gate rejection shown as rejected, an edit in force,
    a reload that reopens the session, three editors compared and one applied, a checkpoint
    exported and loaded by `workbench eval`, a benchmark drawn; a screenshot of every page
    (WORKBENCH_UI_SCREENSHOTS=folder keeps them: the README's screenshots are these)."""
    from urllib.parse import parse_qs, urlparse
    shots = Path(os.environ.get("WORKBENCH_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    assert "127.0.0.1" in server  # the server binds loopback only
    page = Page(browser, server, shots).open("model")
    session = parse_qs(urlparse(browser.current_url).query)["session"][0]  # the address names the session
    assert session.startswith("session-")
    page.shot("model")

    # Edit: the composed request (make "Wymkeark Holviol" a citizen of Kelmoria) with GRACE, first under a
    # gate it cannot meet (GRACE does not reach the rephrasing): red, rejected, nothing changed
    page.open("edit", session)
    assert "GRACE codebook" in page.body()  # the chosen editor's summary
    page.type("gates (optional), e.g. reliability>=0.9,locality>=0.98", "generality>=0.99")
    page.click("Apply edit")
    page.wait.until(lambda b: page.alerts("Error"))
    assert "e0001 was rejected and reverted" in page.alerts("Error")[0]
    assert "generality>=0.99 (measured 0.000" in page.alerts("Error")[0] and not page.alerts("Success")
    bars = {t["name"]: dict(zip(t["x"], t["text"])) for t in page.charts()[0]}
    assert set(bars) == {"before", "after (rejected; reverted)"}
    assert bars["after (rejected; reverted)"]["generality"] == "0.00"  # a zero is labelled, not left blank
    chart = browser.find_element(By.CSS_SELECTOR, ".js-plotly-plot")
    labels = chart.find_elements(By.CSS_SELECTOR, "text.bartext")
    assert len(labels) == len(chart.find_elements(By.CSS_SELECTOR, "g.point")) == 6  # every bar has its label
    page.shot("edit_rejected", scroll_to=chart)
    page.type("gates (optional), e.g. reliability>=0.9,locality>=0.98", "")
    page.click("Apply edit")
    page.wait.until(lambda b: page.alerts("Success"))
    assert "e0002 is in force" in page.alerts("Success")[0]
    bars = {t["name"]: dict(zip(t["x"], t["y"])) for t in page.charts()[0]}
    assert bars["before"]["reliability"] < 0.5 < bars["after"]["reliability"] and bars["after"]["locality"] == 1.0
    page.shot("edit", scroll_to=browser.find_element(By.CSS_SELECTOR, ".js-plotly-plot"))

    # F5: the same address reopens the session with its edit in force
    browser.refresh()
    page.wait.until(lambda b: b.find_elements(By.TAG_NAME, "h1"))
    page.idle()
    assert parse_qs(urlparse(browser.current_url).query)["session"] == [session]
    page.open("history", session)
    assert "in force: e0002" in page.body()
    page.shot("history")
    # revert it: the comparison below starts from the base model (FT on top of GRACE's codebook would
    # meet a model that already answers Kelmoria and barely train; a codebook cannot be exported either)
    page.click("Revert this one")  # the first edit in force: e0002
    assert any("reverted e0002" in s for s in page.alerts("Success"))

    # Compare: GRACE, FT and MEMOIR (the defaults) on the same request, nothing recorded; then apply FT
    page.open("compare", session)
    page.click("Compare")
    page.wait.until(lambda b: "Side by side" in page.body())
    names = {t["name"] for t in page.charts()[0]}
    assert names == {"before", "grace", "ft", "memoir"}
    page.pick("editor to apply", "ft")
    page.click("Apply this one")
    page.wait.until(lambda b: page.alerts("Success"))
    assert "e0004 is in force (ft" in page.alerts("Success")[0] and "equal the comparison's" in page.alerts("Success")[0]
    page.shot("compare", scroll_to=browser.find_element(By.CSS_SELECTOR, ".js-plotly-plot"))

    # History: export a checkpoint, then load it with `workbench eval`
    page.open("history", session)
    out = tmp_path / "exported"
    page.type("new folder", str(out))
    page.click("Export")
    page.wait.until(lambda b: any("holds 1 edit(s)" in s for s in page.alerts("Success")))
    assert "e0004 (ft)" in " ".join(page.alerts("Success"))
    from workbench.eval.requests import EditRequest, dump_requests
    dump_requests(tmp_path / "req.jsonl", [EditRequest("Wymkeark Holviol is a citizen of", "Kelmoria")])
    from workbench.cli.main import main  # in-process: the same main() the console script runs
    for model, name in ((out, "edited"), (None, "base")):
        args = ["eval", "--quiet", "--requests", str(tmp_path / "req.jsonl"), "--json", str(tmp_path / f"{name}.json")]
        assert main([*args, *(["--model", str(model)] if model else [])]) == 0
    import json
    edited, base = (json.loads((tmp_path / f"{n}.json").read_text())["edit"]["mean"]["reliability"]
                    for n in ("edited", "base"))
    assert edited > base  # the exported checkpoint holds the FT edit

    # Benchmarks: the shipped merge results drawn
    page.open("benchmarks", session)
    page.type("or a results file", str(Path(__file__).resolve().parents[1] / "bench" / "results" / "merge_v2.json"))
    page.wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg"))
    traces = page.charts()[0]
    assert {t["name"] for t in traces} == {"reliability", "generality", "locality"} and "ties" in traces[0]["x"]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".js-plotly-plot g.point")) >= 36  # 12 methods x 3 rates
    page.shot("benchmarks", scroll_to=browser.find_element(By.CSS_SELECTOR, ".js-plotly-plot"))
    for name in ("unlearn", "merge"):
        page.open(name, session)
        assert not page.alerts("Error")
        page.shot(name)
    assert sorted(p.name for p in shots.iterdir()) == sorted(f"{n}.png" for n in (
        "model", "edit_rejected", "edit", "history", "compare", "benchmarks", "unlearn", "merge"))


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
