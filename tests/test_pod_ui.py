"""The pod's web UI in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium): log in
with the key, run an image and a music job by clicking, see the image and the audio player, a field error next to
its field, cancel from the queue view; a screenshot of each tab is saved under the test's temp dir."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.pod_harness import POD_KEY, RunningPod, running_pod

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
    ),
]
# selenium comes with the dev extra only
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

LONG_IMAGE = {"type": "image", "prompt": "a long one", "width": 256, "height": 256, "steps": 120}


@pytest.fixture(scope="module")
def pod(session_volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPod]:
    jobs = ("image", "music", "dataset", "training")  # every tab; only the jobs run here load their models
    with running_pod(session_volume, tmp_path_factory.mktemp("ui-job-data"), jobs, warm=False) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def fill(browser: webdriver.Chrome, **values: object) -> None:
    for element_id, value in values.items():
        field = browser.find_element(By.ID, element_id.replace("__", "-"))
        field.clear()
        field.send_keys(str(value))


def wait(browser: webdriver.Chrome, condition: str, timeout_s: float = 60) -> object:
    """Until the JavaScript expression `condition` is truthy; its value. A timeout says what the page shows."""
    try:
        return WebDriverWait(browser, timeout_s, poll_frequency=0.1).until(
            lambda driver: driver.execute_script(f"return {condition}")
        )
    except TimeoutException:
        shown = browser.execute_script(
            "return [...document.querySelectorAll('.status, .job-error, .field-error')]"
            ".map(n => n.textContent).filter(Boolean).join(' | ')"
        )
        raise AssertionError(f"{condition}: still false; the page shows: {shown}") from None


def test_ui_runs_jobs_by_clicking(pod: RunningPod, browser: webdriver.Chrome, tmp_path: Path) -> None:
    browser.get(f"{pod.url}/ui")
    token = browser.find_element(By.NAME, "token")
    token.send_keys(POD_KEY)
    token.submit()
    wait(browser, "document.body.dataset.ready === 'true'")
    assert "64–2048" in browser.find_element(By.ID, "field-image-width").text  # bounds from the schema

    # a field error lands next to its field
    fill(browser, image__prompt="a red fox", image__width=100, image__height=64, image__steps=2)
    browser.find_element(By.ID, "submit-image").click()
    assert "multiple of 8" in wait(browser, "document.getElementById('error-image-width').textContent")
    assert "invalid" in browser.find_element(By.ID, "field-image-width").get_attribute("class")

    fill(browser, image__width=64)
    browser.find_element(By.ID, "submit-image").click()
    assert wait(browser, "document.querySelector('#result-image img.result-image')?.naturalWidth") == 64
    assert browser.find_element(By.ID, "error-image-width").text == ""
    browser.save_screenshot(str(tmp_path / "image.png"))

    browser.find_element(By.ID, "tabbtn-music").click()
    fill(browser, music__lyrics="[Verse]\nla la la", music__tags="piano,happy", music__duration_s=0.4,
         music__codec_steps=2, music__topk=20)  # fmt: skip
    browser.find_element(By.ID, "submit-music").click()
    wait(browser, "document.querySelector('#result-music audio.result-audio')?.readyState >= 1")
    duration = browser.execute_script("return document.querySelector('#result-music audio').duration")
    assert 0 < duration <= 0.5
    link = browser.find_element(By.CSS_SELECTOR, "#result-music a.download").get_attribute("href")
    download = browser.execute_script(
        "return fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => b.byteLength)", link
    )
    assert download > 44  # a WAV with samples, fetched with the browser's session cookie
    browser.save_screenshot(str(tmp_path / "music.png"))

    for tab in ("dataset", "training"):
        browser.find_element(By.ID, f"tabbtn-{tab}").click()
        assert browser.find_element(By.ID, f"submit-{tab}").is_displayed()
        browser.save_screenshot(str(tmp_path / f"{tab}.png"))

    # the queue view lists the jobs and cancels a running one
    running = requests.post(
        f"{pod.url}/run", json={"input": LONG_IMAGE}, headers=pod.auth, timeout=10
    ).json()["id"]
    browser.find_element(By.ID, "tabbtn-queue").click()
    cancel = f"document.querySelector('#row-{running} button.cancel')"
    wait(
        browser,
        f"{cancel} && document.querySelector('#row-{running} .job-status').textContent === 'IN_PROGRESS'",
    )
    browser.execute_script(f"{cancel}.click()")
    wait(browser, f"document.querySelector('#row-{running} .job-status')?.textContent === 'CANCELLED'")
    statuses = browser.execute_script(
        "return [...document.querySelectorAll('#queue-rows .job-status')].map(cell => cell.textContent)"
    )
    assert statuses.count("COMPLETED") == 2 and statuses.count("FAILED") == 1
    browser.save_screenshot(str(tmp_path / "queue.png"))
    for tab in ("image", "music", "dataset", "training", "queue"):
        assert (tmp_path / f"{tab}.png").stat().st_size > 1000
