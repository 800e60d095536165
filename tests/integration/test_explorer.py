"""The signal explorer page (`gss ui`, docs/debugging.md) in a real headless chromium, over a
real broker and GSS server; and its access rules against a TLS server with a token policy."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import server_settings

from compute import execution
from compute.binding import bind
from compute.examples.images.dhash import dhash
from contract.registry import load_registry
from contract.settings import Settings, TlsSettings
from gss.local.generator import ContentGenerator
from gss.server import start_server
from gss.ui.app import RunningExplorer

pytestmark = pytest.mark.integration

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "explorer.png"


def _browser(tmp: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def _wait(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def test_the_page_shows_signals_lineage_events_and_dead_letters(tmp_path: Path) -> None:
    """A dhash value made by the job's own code (with its input position) and a dead letter
    reach a real GSS through a real broker; the page, in headless chromium, lists the
    galaxy's signals, looks the entity up with its lineage, shows the value's event, the
    ingest panel and the dead letter, and logs no console error."""
    from confluent_kafka import Producer
    from selenium.webdriver.common.by import By

    from contract.kafka import producer_config
    from gss.local.broker import LocalBroker

    with LocalBroker() as broker:
        settings: Settings = server_settings(
            tmp_path, kafka={"bootstrap_servers": broker.bootstrap_servers}
        )
        server = start_server(settings)
        explorer = None
        driver = None
        try:
            (bound,) = bind([dhash], load_registry(settings.registry_path), settings)
            event = ContentGenerator(seed=12).next_image(datetime.now(UTC))[2]
            at = execution.Position("content.images", 2, 41, int(time.time() * 1000), b"k")
            rows = execution.run_map(bound, event.SerializeToString(), at=at)
            rows += execution.run_map(bound, b"\xff not an image", at=at)
            producer = Producer(
                producer_config(settings.kafka, "explorer-test", delivery_timeout_seconds=30)
            )
            for topic, key, value in rows:
                producer.produce(topic, key=key or None, value=value)
            assert producer.flush(30) == 0
            entity = event.image_signature.hex()  # type: ignore[attr-defined]
            metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
            explorer_settings = settings.model_copy(
                update={"ui": settings.ui.model_copy(update={"metrics_url": metrics})}
            )
            explorer = RunningExplorer(explorer_settings, server.address, "127.0.0.1", 0)

            driver = _browser(tmp_path)
            driver.get(explorer.url)
            _wait(
                "the galaxies",
                lambda: "images" in driver.find_element(By.ID, "galaxy").text,
            )
            signals = driver.find_element(By.ID, "signals").text
            assert "dhash@1" in signals
            assert "gss.v1.DHash" in signals
            driver.find_element(By.ID, "entity").send_keys(entity)
            driver.find_element(By.CSS_SELECTOR, "#lookup button").click()
            row = _wait(
                "the dhash row",
                lambda: driver.find_elements(By.CSS_SELECTOR, 'tr[data-signal="dhash@1"]'),
            )[0]
            _wait("the value", lambda: "hash" in row.text)
            value = json.loads(row.find_element(By.CSS_SELECTOR, "pre.value").text)
            assert int(value["hash"]) == dhash(event).hash  # type: ignore[union-attr]
            assert "content.images/2:41" in row.text  # the lineage
            assert "compute.examples.images.dhash:dhash" in row.text
            _wait(
                "the event",
                lambda: entity in driver.find_element(By.ID, "events").text,
            )
            _wait(
                "the dead letter",
                lambda: [e for e in driver.find_elements(By.ID, "dead-total") if e.text == "1"],
            )
            assert "bad_input" in driver.find_element(By.ID, "deadletters").text
            _wait("the ingest panel", lambda: "images" in driver.find_element(By.ID, "lag").text)
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
            assert errors == []
            driver.save_screenshot(str(tmp_path / "explorer.png"))
            if os.environ.get("GSS_UPDATE_SCREENSHOT"):  # docs/debugging.md's picture
                shutil.copy(tmp_path / "explorer.png", SCREENSHOT)
        finally:
            if driver is not None:
                driver.quit()
            if explorer is not None:
                explorer.stop()
            server.stop(grace=0.5)


@pytest.fixture
def token_gss(tmp_path: Path) -> Iterator[tuple[Any, TlsSettings, str]]:
    """A TLS GSS server whose policy lets one static token read the images galaxy only."""
    from gss.auth.policy import token_digest
    from tests.security_support import Authority

    token = "explorer-reader-token-0123456789"
    ca = Authority.create(tmp_path / "pki", "explorer-ca")
    cert, key = ca.issue("gss.test", server=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "grants:\n"
        "  - scopes: [images.read]\n    galaxies: [images]\n    permissions: [read]\n"
        f"tokens:\n  - name: explorer\n    sha256: {token_digest(token)}\n"
        "    scopes: [images.read]\n"
    )
    settings = server_settings(tmp_path / "gss")
    settings.server.tls = TlsSettings(cert_file=cert, key_file=key)
    settings.server.auth = settings.server.auth.model_validate({"policy_file": str(policy)})
    server = start_server(settings, registry_poll_seconds=None)
    try:
        yield server, TlsSettings(ca_file=ca.ca_file, server_name="localhost"), token
    finally:
        server.stop(grace=0.5)


def test_the_page_follows_the_apis_access_rules(
    tmp_path: Path, token_gss: tuple[Any, TlsSettings, str]
) -> None:
    """No credentials: 401 naming the problem; the browser's token: only what it may read;
    another galaxy: 403."""
    server, tls, token = token_gss
    settings = server_settings(tmp_path / "ui", client={"tls": tls.model_dump(mode="json")})
    explorer = RunningExplorer(settings, f"127.0.0.1:{server.port}", "127.0.0.1", 0)

    def call(path: str, bearer: str | None = None) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(explorer.url.rstrip("/") + path)
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        status, body = call("/api/galaxies")
        assert status == 401, body
        assert "UNAUTHENTICATED" in body["error"]
        status, body = call("/api/galaxies", token)
        assert status == 200, body
        assert [g["name"] for g in body["galaxies"]] == ["images"]
        status, body = call("/api/entity?galaxy=pins&id=7", token)
        assert status == 403, body
        assert token not in body["error"]
        status, body = call("/api/entity?galaxy=images", token)
        assert status == 400
        assert "missing query parameter" in body["error"]
    finally:
        explorer.stop()
