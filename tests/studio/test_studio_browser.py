"""The whole studio loop in a real browser (headless Chromium, nothing downloaded), on a copy
of cvtricks/train with four dogs planted among the cats: filter to suspected label errors,
relabel two photos and exclude one with the keyboard, retrain, see the figures change; the
labels file holds exactly those decisions, and `pawnet train --labels` uses them. Then
"Where did it look?" on a `best` model (joined backbones). The screenshots of the grid, the
detail view and the "how many more" panel are saved in the test's folder (and in
$PAWNET_SCREENSHOTS when set: docs/images/ is made that way)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from helpers import CVTRICKS, chromium, copy_photos, free_ports, has_chromium

import pawnet
from pawnet.data.labels import read_labels
from pawnet.data.splits import read_manifest
from pawnet.run_folder import RunFolder
from pawnet.studio.app import create_app, open_studio
from pawnet.studio.catalog import class_keys

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not has_chromium(), reason="needs Debian's chromium and chromium-driver "
                       "(apt-get install chromium chromium-driver; .ci/run installs them)"),
]
PLANTED = 4  # dog photos put in cat/: the label errors to find


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("studio")
    photos = Path(shutil.copytree(CVTRICKS / "train", base / "photos"))
    for dog in sorted((photos / "dog").iterdir())[:PLANTED]:
        dog.rename(photos / "cat" / f"planted-{dog.name}")
    return base


@contextlib.contextmanager
def _serving(studio):
    """The studio's page served by uvicorn on a free loopback port; yields its URL."""
    import uvicorn

    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(create_app(studio), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def studio_url(folder, tmp_path):
    run = pawnet.train(folder / "photos", out=str(tmp_path / "runs" / "train"), verbose=False)
    studio = open_studio(folder / "photos", run, tmp_path / "labels.csv")
    studio.jobs.start()
    try:
        with _serving(studio) as url:
            yield url, studio
    finally:
        studio.jobs.stop()


@pytest.fixture
def browser(tmp_path):
    driver = chromium(tmp_path / "chromium-profile", size="1400,900")
    try:
        yield driver
    finally:
        driver.quit()


def _shoot(browser, tmp_path: Path, name: str) -> None:
    browser.save_screenshot(str(tmp_path / name))
    if os.environ.get("PAWNET_SCREENSHOTS"):
        shutil.copy(tmp_path / name, Path(os.environ["PAWNET_SCREENSHOTS"]) / name)


def _first(browser, do):
    """`do(cells)` on the grid's cells, or False (to wait again) while the grid has none or
    is redrawn under it (a new order draws it again once the answer arrives)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        cells = browser.find_elements(By.CSS_SELECTOR, "#grid .cell")
        return do(cells) if cells else False
    except StaleElementReferenceException:
        return False


def _jobs_done(studio, *names: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(studio.jobs.status[n]["state"] == "done" for n in names):
            return
        time.sleep(0.25)
    raise AssertionError(studio.jobs.status)


def _decided(file: Path) -> int:
    return len(read_labels(file)) if file.exists() else 0


def test_review_relabel_exclude_retrain(studio_url, browser, tmp_path, folder):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, studio = studio_url
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .cell"))
    _jobs_done(studio, "answers", "issues", "growth")
    Select(browser.find_element(By.ID, "f-answer")).select_by_value("wrong")
    wait.until(lambda d: d.find_element(By.ID, "jobs").text.endswith("growth done"))
    _shoot(browser, tmp_path, "studio-grid.png")
    Select(browser.find_element(By.ID, "f-answer")).select_by_value("")

    Select(browser.find_element(By.ID, "f-issue")).select_by_value("label")
    Select(browser.find_element(By.ID, "order")).select_by_value("issue")
    wait.until(lambda d: d.find_element(By.ID, "total").text.split()[0] not in ("", "1,000"))
    names = wait.until(lambda d: _first(d, lambda cells: [
        c.find_element(By.CSS_SELECTOR, ".name").text for c in cells[:3]]))
    assert sum(name.startswith("cat/planted-") for name in names) >= 2, names

    wait.until(lambda d: _first(d, lambda cells: cells[0].click() or True))
    grid = browser.find_element(By.ID, "grid")
    assert class_keys(studio.catalog.classes) == {"1": "cat", "2": "dog", "c": "cat",
                                                  "d": "dog"}
    grid.send_keys("d")  # relabel, and the next photo is selected
    wait.until(lambda d: _decided(tmp_path / "labels.csv") == 1)
    grid.send_keys("2")  # the digit of dog
    wait.until(lambda d: _decided(tmp_path / "labels.csv") == 2)
    grid.send_keys("x")
    wait.until(lambda d: _decided(tmp_path / "labels.csv") == 3)
    decisions = read_labels(tmp_path / "labels.csv")
    assert [d.label for d in decisions.values()] == ["dog", "dog", "exclude"]
    assert list(decisions) == names

    grid.send_keys("\ue00c")  # Escape, then open the first photo and ask where it looked
    browser.find_elements(By.CSS_SELECTOR, "#grid .cell")[0].click()
    grid.send_keys("\ue007")  # Enter
    wait.until(lambda d: d.find_element(By.ID, "detail").is_displayed())
    browser.find_element(By.ID, "explain").click()
    WebDriverWait(browser, 120).until(
        lambda d: d.find_element(By.ID, "explain-img").is_displayed())
    _shoot(browser, tmp_path, "studio-detail.png")

    started = time.monotonic()
    browser.find_element(By.ID, "retrain").click()
    result = WebDriverWait(browser, 120).until(
        lambda d: d.find_element(By.ID, "retrain-result").is_displayed()
        and d.find_element(By.ID, "retrain-result"))
    seconds = time.monotonic() - started
    rows = {r.find_elements(By.TAG_NAME, "td")[0].text: [td.text for td in
                                                        r.find_elements(By.TAG_NAME, "td")[1:]]
            for r in result.find_elements(By.TAG_NAME, "tr")[1:]}
    print(f"retrain: click to figures {seconds:.1f} s; {rows}")
    assert rows["val_loss"][0] != rows["val_loss"][1]
    assert rows["data_fingerprint"][0] != rows["data_fingerprint"][1]
    browser.find_element(By.ID, "panel-close").click()

    browser.find_element(By.ID, "growth-btn").click()
    WebDriverWait(browser, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#growth-chart"))
    assert "photos" in browser.find_element(By.CSS_SELECTOR, "#growth .advice").text
    _shoot(browser, tmp_path, "studio-growth.png")

    run = pawnet.train(folder / "photos", labels=str(tmp_path / "labels.csv"), verbose=False,
                       out=str(tmp_path / "runs" / "cli"))
    manifest = {p.path: p for p in read_manifest(RunFolder(run).manifest)}
    root = (folder / "photos").resolve()
    for path, decision in decisions.items():
        photo = manifest.get(str(root / path))
        if decision.label == "exclude":
            assert photo is None
        else:
            assert photo.label == "dog" and photo.label_source == "labels.csv"


def test_where_did_it_look_on_a_best_model(joined_run, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photos = copy_photos(tmp_path / "photos", 3)  # a folder other than the run's: allowed
    studio = open_studio(photos, joined_run, tmp_path / "labels.csv")
    # its jobs are not started: the run is shared, and "Where did it look?" needs none of them
    with _serving(studio) as url:
        wait = WebDriverWait(browser, 60)
        browser.get(url)
        wait.until(lambda d: _first(d, lambda cells: cells[0].click() or True))
        browser.find_element(By.ID, "grid").send_keys("\ue007")  # Enter: the detail view
        wait.until(lambda d: d.find_element(By.ID, "detail").is_displayed())
        started = time.monotonic()
        browser.find_element(By.ID, "explain").click()
        image = browser.find_element(By.ID, "explain-img")
        toast = wait.until(lambda d: image.is_displayed()
                           and d.find_element(By.ID, "toast").get_attribute("textContent"))
        print(f"best model: click to heat-map {time.monotonic() - started:.1f} s; {toast!r}")
        assert image.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].naturalWidth", image) == 260
        assert toast.startswith("Layer-CAM heat-map for ") and "33×33 cells" in toast
        assert not browser.find_element(By.ID, "detail-img").is_displayed()
        _shoot(browser, tmp_path, "studio-explain-best.png")
