"""`report.html` in a real browser: headless Chromium opens it from disk, every section is
there, nothing fails to load or run, and a screenshot is saved in the test's folder."""

import pytest
from helpers import chromium, has_chromium

import pawnet
from pawnet.reporting.html import SECTIONS

pytestmark = pytest.mark.skipif(
    not has_chromium(),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


def test_the_html_report_renders_every_section_offline(trained_run, tmp_path):
    from selenium.webdriver.common.by import By

    report = pawnet.evaluate(trained_run)
    report.write(tmp_path / "eval")
    page = tmp_path / "eval" / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert page.stat().st_size < 2_000_000
    driver = chromium(tmp_path / "profile", "1100,900", console=True)
    try:
        driver.get(page.as_uri())
        for key in SECTIONS:
            assert driver.find_element(By.ID, key).is_displayed(), key
        assert f"accuracy {report.accuracy:.4f}" in driver.find_element(By.ID, "summary").text
        broken = driver.execute_script(
            "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
            ".length")
        assert broken == 0
        cards = driver.find_elements(By.CSS_SELECTOR, "#misclassified .card")
        assert len(cards) == min(len(report.misclassified), 64)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 20_000
    finally:
        driver.quit()
