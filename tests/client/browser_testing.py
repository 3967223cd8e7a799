"""What the browser tests (and bench/explorer_bench.py) share: Debian's headless Chromium driven by
Selenium, its console read back. A module with a unique name, imported by the test modules."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service


def chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver (the Makefile's test target installs them), or skip with the reason."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver; `make test` does it where it may)")
    return browser, driver


@contextmanager
def headless(width: int = 1400, height: int = 1000) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium (empty cache), its console log kept; quit on exit."""
    browser, driver_path = chromium()
    options = Options()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: webdriver.Chrome) -> list[dict]:
    """The browser console's errors since the last call (failed loads and uncaught exceptions included)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
