"""Acceptance: the daemon's web page in a real browser (Debian's Chromium,
driven by Playwright), against a real daemon building a busybox hierarchy.

One daemon and one browser serve the whole module (started once: about 10 s);
the tests run in order, each leaving the daemon idle."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from orchestrator.core.runboard import event_time
from tests.browser import artifacts, chromium
from tests.conftest import Project, Testbed, unique_namespace
from tests.integration.daemon_helpers import (
    DaemonProcess,
    UnixHTTPConnection,
    api,
    daemon_config,
    wait_until,
)

pytestmark = pytest.mark.integration
TOKEN = "tok-" + "5" * 40
LAYERS = ("base", "mid", "leaf", "other")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Events:
    """The daemon's /v1/events, each record stamped with when it arrived here."""

    def __init__(self, sock: Path) -> None:
        self.records: list[tuple[float, dict[str, Any]]] = []
        self.conn = UnixHTTPConnection(sock, timeout=600)
        self.conn.request("GET", "/v1/events")
        self.resp = self.conn.getresponse()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):  # ends when the test closes the stream
            for line in self.resp:
                self.records.append((time.time(), json.loads(line)))

    def first(self, event: str, layer: str, after: float) -> float:
        """When the daemon published the first such event after ``after``."""
        def found() -> float | None:
            for at, record in self.records:
                if at >= after and record.get("event") == event and \
                        record.get("layer") == layer:
                    return event_time(record.get("timestamp"), 0.0)
            return None

        return float(wait_until(found, 120, 0.05, f"{event} of {layer}"))

    def close(self) -> None:
        if self.conn.sock is not None:
            with contextlib.suppress(OSError):  # wakes the reader blocked in recv
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
        self.thread.join(5)


class Site:
    def __init__(self, project: Project, testbed: Testbed) -> None:
        self.project = project
        self.testbed = testbed
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.namespace = unique_namespace()
        (project.root / "token").write_text(TOKEN + "\n")
        self.daemon = self.start(token=True)
        self.requests: list[str] = []

    def start(self, *, token: bool) -> DaemonProcess:
        web = f'[web]\nlisten = "127.0.0.1:{self.port}"\n' + \
            ('token_file = "token"\n' if token else "")
        daemon_config(self.project, self.testbed.registry, self.namespace,
                      self.testbed.seed_image, self.testbed.seed_tag, extra=web)
        daemon = DaemonProcess(self.project).ready()
        daemon.idle()
        return daemon

    def restart(self, *, token: bool) -> None:
        assert self.daemon.stop() == 0
        self.daemon = self.start(token=token)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, testbed: Testbed) -> Iterator[Site]:
    project = Project(tmp_path_factory.mktemp("web") / "project")
    project.layer("base", 'from = "upstream:seed"\ntags = ["1.0"]\n')
    project.layer("mid", 'from = "base"\ntags = ["2.0", "2"]\n',
                  "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY conf.txt /conf.txt\n"
                  "RUN for i in 1 2 3; do echo compiling part $i of 3; sleep 2; done\n"
                  "USER 1000\n", files={"conf.txt": "v1\n"})
    project.layer("leaf", 'from = "mid"\n')
    project.layer("other", 'from = "base"\n')
    made = Site(project, testbed)
    yield made
    made.daemon.kill()
    from tests.conftest import _remove_scratch_of

    _remove_scratch_of(project)


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Any]:
    with chromium() as context:
        context.on("request", lambda request: site.requests.append(request.url))
        yield context


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    made = browser.new_page()
    yield made
    made.close()


def node(page: Any, layer: str) -> Any:
    return page.locator(f'[id="layer-{layer}"]')


def node_state_line(page: Any, layer: str) -> str:
    return str(node(page, layer).locator("text").nth(1).text_content())


def test_the_graph_shows_every_layer_live(site: Site, page: Any) -> None:
    page.goto(site.url + "/")
    page.wait_for_selector('#live[data-live="on"]')
    for layer in LAYERS:
        page.wait_for_selector(f'[id="layer-{layer}"][data-state="up_to_date"]')
        assert node_state_line(page, layer) == "up to date"
    assert "tags: 2.0, 2" in str(node(page, "mid").text_content())
    assert "built 20" in str(node(page, "leaf").text_content())
    assert page.locator('[id="upstream-seed"]').count() == 1
    page.screenshot(path=str(artifacts() / "web-graph.png"), full_page=True)


def test_a_saved_file_turns_its_node_building_then_up_to_date(site: Site, page: Any) -> None:
    page.goto(site.url + "/")
    page.wait_for_selector('#live[data-live="on"]')
    page.wait_for_selector('[id="layer-mid"][data-state="up_to_date"]')
    events = Events(site.daemon.socket)
    try:
        saved = time.time()
        (site.project.layers / "mid" / "conf.txt").write_text(f"v{saved}\n")
        page.wait_for_selector('[id="layer-mid"][data-state="building"]', timeout=60_000)
        seen_building = time.time()
        assert node_state_line(page, "mid").startswith("building ")
        page.screenshot(path=str(artifacts() / "web-graph-building.png"))
        # Built, then (once the run ends and the daemon's view is read again) up to date.
        page.wait_for_selector('[id="layer-mid"]:is([data-state="built"], '
                               '[data-state="up_to_date"])', timeout=60_000)
        seen_built = time.time()
        assert node_state_line(page, "mid") == "up to date"
        started = events.first("build_started", "mid", saved)
        finished = events.first("build_finished", "mid", saved)
    finally:
        events.close()
    assert seen_building - started < 2.0, (started, seen_building)
    assert seen_built - finished < 2.0, (finished, seen_built)
    site.daemon.idle()


def test_the_layer_page_shows_the_history_and_streams_the_log(site: Site, page: Any) -> None:
    code, answer = api(site.daemon.socket, "POST", "/v1/builds",
                       {"layers": ["mid"], "force": True})
    assert code == 202, answer
    wait_until(lambda: any(b["outcome"] == "running" for b in site.daemon.builds("mid")), 60,
               0.05, "mid running")
    page.goto(site.url + "/layers/mid")
    log = page.locator("#log")
    # The running build's log grows on the page while it runs (no reload).
    log.filter(has_text="compiling part 1 of 3").wait_for(timeout=60_000)
    assert "compiling part 3 of 3" not in str(log.text_content())
    log.filter(has_text="compiling part 3 of 3").wait_for(timeout=60_000)
    assert "compiling part 2 of 3" in str(log.text_content())
    site.daemon.idle()
    page.reload()
    rows = page.locator("#history-table tbody tr")
    assert rows.count() >= 2
    first = str(rows.first.text_content())
    assert "built" in first and "manual trigger" in first and "buildah" in first
    assert "sha256:" in str(page.locator("table.facts").text_content())
    page.wait_for_selector("#papers ol.chain li", timeout=30_000)  # explain, from the registry
    assert "mid" in str(page.locator("#papers").text_content())
    assert page.locator("#sbom-diff").count() == 1
    page.screenshot(path=str(artifacts() / "web-layer.png"), full_page=True)


def test_with_a_token_a_trigger_from_the_page_starts_a_build(site: Site, page: Any) -> None:
    before = {b["id"] for b in site.daemon.builds("leaf")}
    page.goto(site.url + "/layers/leaf")
    assert page.locator("#trigger").count() == 0  # signed out: nothing to click
    page.fill('#sign-in input[name="token"]', TOKEN)
    page.click('#sign-in button')
    page.wait_for_selector("#trigger")
    page.check('input[name="force"]')
    page.click("#trigger")
    page.wait_for_selector("#queued")
    new = wait_until(lambda: [b for b in site.daemon.builds("leaf") if b["id"] not in before],
                     60, 0.1, "a build of leaf")
    assert "web trigger" in str(new[0]["cause"])
    site.daemon.idle()


def test_the_pages_asked_no_host_but_the_daemon(site: Site, page: Any) -> None:
    for path in ("/runs", "/layers/other", "/"):
        page.goto(site.url + path)
        page.wait_for_load_state("networkidle")
        if path == "/runs":
            page.locator("#engines").wait_for()
            page.locator(".uplot").nth(1).wait_for()  # queue depth and build times, drawn
            assert "buildah" in str(page.locator("#engines").text_content())
            page.screenshot(path=str(artifacts() / "web-runs.png"), full_page=True)
    hosts = {urlsplit(url).netloc for url in site.requests if not url.startswith("data:")}
    assert hosts == {f"127.0.0.1:{site.port}"}, hosts


def test_without_a_token_no_action_is_offered_and_a_forged_post_is_refused(
    site: Site, page: Any
) -> None:
    site.restart(token=False)
    page.goto(site.url + "/layers/leaf")
    assert page.locator("#trigger").count() == 0
    assert page.locator("#sign-in").count() == 0
    assert "read-only" in str(page.locator("header").text_content())
    before = len(site.daemon.builds())
    forged = page.request.post(site.url + "/layers/leaf/trigger", form={"csrf": "x"})
    assert forged.status == 403
    assert len(site.daemon.builds()) == before
