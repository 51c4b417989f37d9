"""The web demo in a real headless Chromium: start app.py on a free port, upload, pick styles, read captions.

Needs selenium (requirements-app.txt) and Debian's chromium + chromium-driver; skipped without them.
Also checks that the page requests nothing but the local server (no CDN, fonts, analytics).

    STYLECAP_APP_MODEL=output/demo_personality/checkpoints/best.pt STYLECAP_APP_CLIP=pre_model/small_clip_aligned.pt \
    STYLECAP_SCREENSHOT=docs/app_screenshot.png .venv/bin/python -m pytest -q tests/test_app_browser.py
runs it on the demo model and writes the README's screenshot.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.test_app import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -r requirements-app.txt")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install -r requirements-app.txt")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Chromium and chromedriver: apt-get install chromium chromium-driver")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(small_models, demo_data, tmp_path_factory):
    """app.py in a subprocess on a free port -> (url, example image folder); stopped at the end."""
    model = os.environ.get("STYLECAP_APP_MODEL")
    clip = os.environ.get("STYLECAP_APP_CLIP", str(small_models / "small_clip.pt"))
    if not model:
        model = str(save_tiny_model(small_models, tmp_path_factory.mktemp("app") / "styled.pt", styled=True))
    examples = demo_data / "personality" / "yfcc_images"
    port = free_port()
    log = tmp_path_factory.mktemp("app_log") / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--model_path", model, "--clip_model_path", clip,
                                 "--port", str(port), "--device", "cpu", "--examples", str(examples)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while "running at" not in log.read_text():
            assert proc.poll() is None, f"app.py exited with {proc.returncode}:\n{log.read_text()}"
            assert time.time() < deadline, f"app.py did not start in 180 s:\n{log.read_text()}"
            time.sleep(0.5)
        assert url in log.read_text()  # it prints its address
        yield url, examples
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
              "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def upload(driver, path: Path) -> None:
    field = driver.find_element(By.CSS_SELECTOR, "#sc-files input[type=file]")
    field.send_keys(str(path))
    WebDriverWait(driver, 30).until(lambda d: path.stem[:8] in d.find_element(By.ID, "sc-files").text)


def pick_style(driver, query: str) -> None:
    box = driver.find_element(By.CSS_SELECTOR, "#sc-styles input")
    box.click()
    box.send_keys(query)
    WebDriverWait(driver, 10).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#sc-styles li[role=option]")))
    box.send_keys(Keys.ENTER)  # takes the first match
    box.send_keys(Keys.ESCAPE)


def status_text(driver) -> str:
    """The handler's status lines (not gradio's progress timer in the same box)."""
    return "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, "#sc-status p"))


def run_and_wait(driver, old_status: str) -> str:
    driver.find_element(By.ID, "sc-run").click()
    WebDriverWait(driver, 120).until(lambda d: status_text(d) not in ("", old_status))
    return status_text(driver)


def test_page_captions_an_upload_in_three_styles_offline(server, browser, tmp_path):
    url, examples = server
    t0 = time.perf_counter()
    browser.get(url)
    WebDriverWait(browser, 60).until(EC.element_to_be_clickable((By.ID, "sc-run")))
    image = sorted(examples.glob("*.jpg"))[0]
    upload(browser, image)
    styles = browser.execute_script(  # the model's own styles, as the page lists them
        "return [...document.querySelectorAll('#sc-styles .token > span')].map(e => e.textContent)")
    assert len(styles) == 1  # the first style is chosen by default; add two more by searching
    pick_style(browser, "Gloomy")
    pick_style(browser, "Cynical")
    status = run_and_wait(browser, "")
    seconds = time.perf_counter() - t0
    assert "3 captions for 1 image × 3 styles" in status, status
    results = browser.find_element(By.ID, "sc-results")
    names = [e.text for e in results.find_elements(By.CSS_SELECTOR, ".sc-style-name")]
    captions = [e.text for e in results.find_elements(By.CSS_SELECTOR, ".sc-caption")]
    assert names == [styles[0], "Gloomy", "Cynical (Doubtful, Skeptical)"]  # grouped per style, in order
    assert len(captions) == 3 and all(c.strip() for c in captions)
    assert image.name in results.text and "score" in results.text
    # issue 17 §5: the upload has a preview, and the page says what the score is
    assert browser.find_elements(By.CSS_SELECTOR, "#sc-previews img")
    assert "log-probability" in browser.find_element(By.ID, "sc-score-note").text
    assert "predictions.jsonl" in browser.find_element(By.ID, "sc-download").text
    shot = Path(os.environ.get("STYLECAP_SCREENSHOT") or tmp_path / "app_screenshot.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, 0)")  # the whole page, from the top
    size = browser.get_window_size()
    browser.set_window_size(size["width"], max(size["height"], browser.execute_script(
        "return document.documentElement.scrollHeight") + 140))
    browser.save_screenshot(str(shot))
    browser.set_window_size(size["width"], size["height"])
    print(f"\npage loaded, image uploaded, 3 styles captioned in {seconds:.1f} s; screenshot {shot}")
    for style, caption in zip(names, captions):
        print(f"  [{style}] {caption}")

    # offline: everything the page asked for came from the app itself (or is inline data)
    port_prefix = url.rstrip("/")
    urls = requested_urls(browser)
    assert urls and all(u.startswith((port_prefix, "data:", "blob:")) for u in urls), \
        [u for u in urls if not u.startswith((port_prefix, "data:", "blob:"))]
    print(f"  {len(urls)} requests, all to {port_prefix} or inline data:")


def test_page_reports_a_bad_upload_then_captions_an_example(server, browser, tmp_path):
    url, examples = server
    browser.get(url)
    WebDriverWait(browser, 60).until(EC.element_to_be_clickable((By.ID, "sc-run")))
    bad = tmp_path / "holiday.jpg"
    bad.write_text("this is not an image")
    upload(browser, bad)
    status = run_and_wait(browser, "")
    assert "Error" in status and "ignored: holiday.jpg (not an image)" in status, status
    browser.find_element(By.CSS_SELECTOR, "#sc-files button[aria-label='Clear']").click()
    # issue 17 §5: a non-image is named as soon as it is uploaded (the browser used to drop it silently)
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping list")
    upload(browser, notes)
    WebDriverWait(browser, 30).until(
        lambda d: "ignored: notes.txt (not an image)" in d.find_element(By.ID, "sc-notice").text)
    browser.find_element(By.CSS_SELECTOR, "#sc-files button[aria-label='Clear']").click()
    # the examples are thumbnails with short names; clicking one uploads it
    example = sorted(examples.glob("*.jpg"))[1]
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#sc-examples .thumbnail-item")
    assert len(thumbs) >= 2 and all(t.find_elements(By.TAG_NAME, "img") for t in thumbs)
    assert "2 · " + example.stem[:8] in browser.find_element(By.ID, "sc-examples").text
    thumbs[1].click()
    WebDriverWait(browser, 30).until(lambda d: example.stem[:8] in d.find_element(By.ID, "sc-files").text)
    status = run_and_wait(browser, status)
    assert "1 caption for 1 image × 1 style" in status, status
    assert len(browser.find_elements(By.CSS_SELECTOR, "#sc-results .sc-caption")) == 1


def test_all_styles_disables_the_chosen_chips(server, browser):
    """Issue 17 §5: ticking 'all N styles' disables the style box, so it is clear which wins."""
    url, _ = server
    browser.get(url)
    WebDriverWait(browser, 60).until(EC.element_to_be_clickable((By.ID, "sc-run")))
    box = browser.find_element(By.CSS_SELECTOR, "#sc-styles input")
    assert box.is_enabled()
    browser.find_element(By.CSS_SELECTOR, "#sc-all input").click()
    WebDriverWait(browser, 10).until(lambda d: not d.find_element(By.CSS_SELECTOR, "#sc-styles input").is_enabled())
    browser.find_element(By.CSS_SELECTOR, "#sc-all input").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "#sc-styles input").is_enabled())
