"""Debian's headless Chromium, driven through chromium-driver by Selenium, for the tests of the
auditors' web view (``tollgate audit ui``) and the README's screenshot.

Nothing is downloaded: the browser and its driver are Debian's (``make test`` installs them when run
as root). ``missing()`` names what is absent, so a test can skip saying which.
"""

from __future__ import annotations

import pathlib
import shutil
import time
from collections.abc import Callable, Sequence

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

__all__ = ["CHROMEDRIVER", "CHROMIUM", "chromium", "follow", "missing", "wait_for_download"]

CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"


def missing() -> list[str]:
    """Which of Debian's chromium and chromium-driver are not installed."""
    return [
        f"{name} (Debian's {package})"
        for name, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"))
        if shutil.which(name) is None
    ]


def chromium(
    downloads: pathlib.Path, *, resolve: Sequence[str] = (), width: int = 1400, height: int = 1000
) -> webdriver.Chrome:
    """A headless Chromium saving downloads into ``downloads``; ``resolve``: host names that lead to
    127.0.0.1 (so a page can be reached by the host name a policy names)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(shutil.which(CHROMIUM))
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    if resolve:
        options.add_argument("--host-resolver-rules=" + ", ".join(f"MAP {name} 127.0.0.1" for name in resolve))
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(shutil.which(CHROMEDRIVER))))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def follow(driver: webdriver.Chrome, element: WebElement, timeout: float = 20.0) -> None:
    """Click ``element`` (a link, a form's button) and wait until the page it leads to has replaced
    this one and loaded: a click returns at once, and the old page's elements may still be found
    (then go stale) while the next one loads."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    wait = WebDriverWait(driver, timeout)
    wait.until(expected_conditions.staleness_of(page))
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")


def wait_for_download(
    downloads: pathlib.Path, accept: Callable[[pathlib.Path], bool], timeout: float = 20.0
) -> pathlib.Path:
    """The first finished download in ``downloads`` that ``accept`` takes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(downloads.iterdir()):
            if not path.name.endswith(".crdownload") and accept(path):
                return path
        time.sleep(0.1)
    raise TimeoutError(f"no download in {downloads}: {sorted(p.name for p in downloads.iterdir())}")
