"""The web demo in a real browser: headless Chromium (Debian's chromium + chromium-driver, installed by .ci/run)
enters a prompt, picks two methods, runs, and reads the verdicts and costs back from the page; a bad prompt shows
its error in the page. Skipped, saying so, where Gradio, Selenium or a browser is missing."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the demo extra (gradio) is not installed")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="no browser: install Debian's chromium and chromium-driver (.ci/run does)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tiny_shapes_pipeline):
    from latentalign.demo import build_demo

    demo = build_demo(tiny_shapes_pipeline)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(predicate, timeout: float = 120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError("the page did not show the expected content in time")


def set_text(browser, elem_id: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input")
    box.clear()
    box.send_keys(text)


def test_two_methods_side_by_side_with_verdicts_and_costs(app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(app)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#run"))
    set_text(browser, "prompt", "a red circle left of a blue square")
    set_text(browser, "seeds", "0, 1")
    boxes = {
        b.find_element(By.XPATH, "..").text.strip(): b
        for b in browser.find_elements(By.CSS_SELECTOR, "#methods input[type=checkbox]")
    }
    assert {"best-of-n", "early-exit", "attention-refinement"} <= set(boxes)
    if boxes["early-exit"].is_selected():  # the default pick
        boxes["early-exit"].click()
    boxes["best-of-n"].click()
    boxes["attention-refinement"].click()
    browser.find_element(By.CSS_SELECTOR, "#run").click()

    def table_rows():
        rows = browser.find_elements(By.CSS_SELECTOR, "#table table tbody tr")
        return rows if len(rows) == 6 else None  # plain, best-of-n, attention-refinement x 2 seeds

    rows = [[cell.text for cell in r.find_elements(By.TAG_NAME, "td")] for r in wait_for(table_rows)]
    assert [r[0] for r in rows] == ["plain"] * 2 + ["best-of-n"] * 2 + ["attention-refinement"] * 2
    assert [r[1] for r in rows] == ["0", "1"] * 3
    assert all(r[2] in ("ok", "failed") for r in rows)  # the checker's verdict on each image
    evals = {r[0]: float(r[4]) for r in rows}
    assert evals["best-of-n"] == 4 * evals["plain"] and evals["attention-refinement"] > evals["plain"]
    assert all(float(r[5]) > 0 for r in rows)  # seconds
    assert "chosen" in rows[2][6]  # Best-of-N lists its candidates
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 6
    shown = browser.find_element(By.CSS_SELECTOR, "#candidates").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#candidates img")) >= 8  # 4 candidates x 2 seeds
    assert shown.count("chosen") == 2, shown  # one pick per seed, named in its caption
    shot = Path(os.environ.get("LATENTALIGN_DEMO_SCREENSHOT", tmp_path / "demo.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 0


def test_a_bad_prompt_shows_its_error_in_the_page(app, browser):
    from selenium.webdriver.common.by import By

    browser.get(app)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#run"))
    set_text(browser, "prompt", "a purple dragon")
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    text = wait_for(lambda: browser.find_element(By.CSS_SELECTOR, "#error").text.strip())
    assert "unknown word 'purple'" in text
    set_text(browser, "prompt", "a red circle")
    set_text(browser, "composition", "best-of-n+early-exit")
    browser.find_element(By.CSS_SELECTOR, "#run").click()
    text = wait_for(lambda: "selection place" in browser.find_element(By.CSS_SELECTOR, "#error").text and True)
    assert text
