"""The web page in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, nothing downloaded) opens `pawnet serve imagenet-catdog`, uploads a real
cat photo, and must show `cat`; a screenshot is saved in the test's temp folder."""

from __future__ import annotations

import shutil

import pytest
import serve_load
from helpers import CVTRICKS, chromium, has_chromium

# imagenet-catdog says cat for this one with P(cat) 0.93 (checked with `pawnet predict`)
CAT = CVTRICKS / "test" / "cat" / "cat.1005.jpg"

pytestmark = pytest.mark.skipif(
    not has_chromium(),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
           "chromium-driver; .ci/run installs them)")


@pytest.fixture(scope="module")
def server():
    with serve_load.served("imagenet-catdog") as running:
        yield running.url
    assert running.exit_code in serve_load.CLEAN_EXIT


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _upload(browser, paths) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))


def _wait_for_results(browser, n: int) -> list:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def done(driver):
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        finished = [c for c in cards
                    if not c.find_elements(By.CSS_SELECTOR, ".label.pending")]
        return cards if len(cards) >= n and len(finished) == len(cards) else False

    return WebDriverWait(browser, 60).until(done)


def test_page_labels_a_cat_photo(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    WebDriverWait(browser, 30).until(
        lambda d: "cat, dog, neither" in d.find_element(By.ID, "model").text)
    _upload(browser, [CAT])
    [card] = _wait_for_results(browser, 1)
    assert card.find_element(By.CSS_SELECTOR, ".name").text == CAT.name
    assert card.find_element(By.CSS_SELECTOR, ".label").text == "cat"
    bars = card.find_elements(By.CSS_SELECTOR, ".bar")
    assert [b.get_attribute("data-class") for b in bars] == ["cat", "dog", "neither"]
    top = card.find_element(By.CSS_SELECTOR, ".bar.top")
    assert top.get_attribute("data-class") == "cat" and top.text.endswith("%")
    assert browser.execute_script(
        "return document.querySelector('.card img').naturalWidth") > 0  # the photo shows
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_bad_file_error_shows_next_to_it_at_phone_width(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo\n")
    browser.set_window_size(390, 844)  # a phone
    browser.get(server + "/")
    _upload(browser, [CAT, bad])
    cards = _wait_for_results(browser, 2)
    by_name = {c.find_element(By.CSS_SELECTOR, ".name").text: c for c in cards}
    assert by_name[CAT.name].find_element(By.CSS_SELECTOR, ".label").text == "cat"
    error = by_name["notes.jpg"].find_element(By.CSS_SELECTOR, ".error").text
    assert error.startswith("not an image")
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= browser.execute_script("return window.innerWidth")  # no sideways scroll
    browser.save_screenshot(str(tmp_path / "phone.png"))


def test_an_answer_that_is_not_a_class_says_why(trained_run, browser):
    from selenium.webdriver.common.by import By

    with serve_load.served(str(trained_run), "--min-confidence", "0.9999") as running:
        browser.get(running.url + "/")
        _upload(browser, [CAT])
        [card] = _wait_for_results(browser, 1)
        label = card.find_element(By.CSS_SELECTOR, ".label")
        assert label.text in ("unsure", "neither") and "doubt" in label.get_attribute("class")
        why = card.find_element(By.CSS_SELECTOR, ".why").text
        assert why.startswith("unlike the training photos" if label.text == "neither"
                               else "no class likely enough")
        bars = card.find_elements(By.CSS_SELECTOR, ".bar")
        assert [b.get_attribute("data-class") for b in bars] == ["cat", "dog"]


def test_the_page_shows_where_the_model_looked_on_request(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server + "/")
    _upload(browser, [CAT])
    [card] = _wait_for_results(browser, 1)
    card.find_element(By.CSS_SELECTOR, "button.explain").click()
    WebDriverWait(browser, 60).until(
        lambda d: card.find_elements(By.CSS_SELECTOR, "img.heatmap"))
    assert card.find_element(By.CSS_SELECTOR, "img").get_attribute("src").startswith(
        "data:image/png;base64,")
    assert "heat-map (Layer-CAM, 33×33 cells): where the model looked for cat" in card.text


def test_the_api_docs_page_works_offline(server, tmp_path):
    import json

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(tmp_path / "chromium-profile", network=True)
    try:
        driver.get(server + "/docs")
        operations = WebDriverWait(driver, 30).until(lambda d: [
            e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")])
        messages = [json.loads(entry["message"])["message"]
                    for entry in driver.get_log("performance")]
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
    assert {"/v1/predict", "/v1/explain", "/v1/model"} <= set(operations)
    requested = {m["params"]["request"]["url"] for m in messages
                 if m["method"] == "Network.requestWillBeSent"}
    assert server + "/docs-assets/swagger-ui-bundle.js" in requested
    away = [url for url in requested if url.split(":")[0] in ("http", "https", "ws", "wss")
            and not url.startswith(server + "/")]
    assert away == []
