"""The Swagger UI page in a real browser (Debian's headless Chromium through chromedriver): it shows the
service's title and auth note, uploads a device file with the form's defaults and gets 200, and no
request leaves the host, with the page served under a non-loopback host name (Swagger UI only calls
its third-party validator for those). Run by `make test-browser`, which installs Chromium."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from scripts.local_server import Server, start_server, stop_server
from tests.factories import device_export

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HOST = "pat.internal.test"


@pytest.fixture(scope="module")
def docs_server(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Authentication disabled (loopback callers only): the page is what a developer opens locally.
    server = start_server(
        home=model_store,
        log_path=tmp_path_factory.mktemp("browser-server") / "server.log",
        extra_env={"PAT_AUTH": "disabled"},
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Chromium and chromedriver are needed: run `make test-browser` (installs them)")
    # selenium finds nothing on the network: the driver and browser are named here.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        # Our host name goes to the loopback server; every other name fails to resolve, but the
        # attempt is still in the network log the test reads.
        f"--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def test_upload_through_the_docs_page(docs_server: Server, browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    name, content = device_export(".agd")
    device_file = tmp_path / name
    device_file.write_bytes(content)
    port = urlsplit(docs_server.url).port
    browser.get(f"http://{HOST}:{port}/")
    wait = WebDriverWait(browser, 60)
    operation_id = "#operations-Analysis-analyze_file"
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, operation_id))

    title = browser.find_element(By.CSS_SELECTOR, ".info .title")
    assert "PAT model service" in title.text
    assert title.value_of_css_property("visibility") == "visible"
    assert "Authentication is disabled" in browser.find_element(By.ID, "pat-auth-note").text

    operation = browser.find_element(By.CSS_SELECTOR, operation_id)
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait.until(lambda d: operation.find_elements(By.CSS_SELECTOR, "button.try-out__btn"))
    operation.find_element(By.CSS_SELECTOR, "button.try-out__btn").click()
    # Only the file is chosen: timezone, subject and outputs keep the form's defaults.
    operation.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(device_file))
    operation.find_element(By.CSS_SELECTOR, "button.execute").click()
    status_cell = ".live-responses-table tr.response td.response-col_status"
    wait.until(lambda d: operation.find_elements(By.CSS_SELECTOR, status_cell))
    status = operation.find_element(By.CSS_SELECTOR, status_cell).text
    body = operation.find_element(By.CSS_SELECTOR, ".live-responses-table tr.response .microlight").text
    assert status == "200", body[:2000]
    assert json.loads(body)["quality"]["total_minutes"] >= 1_440

    urls = requested_urls(browser)
    assert any(urlsplit(url).path == "/v1/analyze/file" for url in urls)
    foreign = [url for url in urls if urlsplit(url).scheme in ("http", "https", "ws", "wss")]
    foreign = [url for url in foreign if urlsplit(url).hostname != HOST]
    assert foreign == [], f"requests left the host: {foreign}"
