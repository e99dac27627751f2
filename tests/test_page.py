"""The live page in a real headless Chromium, against a real server."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from .api import history_ids, put
from .conftest import ROOT, Server, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "artifacts"
API_KEY = "page-test-key"

# A deadline for every wait on the page, generous because the machine is shared.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Visit:
    """What the browser did while a test ran, checked when the test ends."""
    server: Server
    page: Page
    script_errors: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Open a server's page in a fresh browser context.

    Every test also proves the page threw no script error and loaded nothing from elsewhere.
    """
    visits: list[Visit] = []

    def open_(server: Server, width: int = 1100, height: int = 850) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        visit = Visit(server, context.new_page())
        visit.page.on("pageerror", lambda error: visit.script_errors.append(str(error)))
        visit.page.on("request", lambda request: visit.requested.append(request.url))
        visits.append(visit)
        visit.page.goto(server.url + "/")
        return visit.page

    yield open_
    for visit in visits:
        visit.page.context.close()
        assert visit.script_errors == []
        assert [url for url in visit.requested
                if not url.startswith((visit.server.url + "/", "data:"))] == []


def expect_status(page: Page, state: str, text: str) -> None:
    """The status shows its state in colour (``data-state``) and in words."""
    expect(page.locator("#status")).to_have_attribute("data-state", state)
    expect(page.locator("#status")).to_have_text(text)


def press_connect(page: Page) -> None:
    page.get_by_role("button", name="Connect", exact=True).click()


def cards(page: Page, key: str | None = None) -> Locator:
    """The feed's event cards, newest first; only those for ``key`` when given."""
    found = page.locator("#events > li")
    if key is None:
        return found
    return found.filter(has=page.locator(".event__key", has_text=re.compile(
        "^" + re.escape(key) + "$")))


def shown_ids(page: Page) -> list[int]:
    """Ids of the events on the page, oldest first."""
    return [int(i) for i in reversed(cards(page).evaluate_all("els => els.map(e => e.dataset.id)"))]


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name, full_page=True, animations="disabled")


def test_connected_before_any_event_then_changes_appear(server, open_page):
    page = open_page(server)
    expect_status(page, "connected", "connected")
    assert history_ids(server.url) == [], "no event may exist while the page connects"
    expect(page.locator("#empty")).to_be_visible()

    put(server.url, "user.1", {"name": "Ada"})
    put(server.url, "user.1", {"name": "Ada", "role": "admin"}, scope="session",
        scope_id="s-42")
    put(server.url, "user.1", {"name": "Ada", "role": "owner"}, scope="session",
        scope_id="s-42")
    put(server.url, "task.7", "queued", scope="workflow", scope_id="wf-1")
    deleted = requests.post(server.url + "/api/v1/memory/delete", json={"key": "user.1"},
                            timeout=10)
    assert deleted.status_code == 204

    expect(cards(page)).to_have_count(5)
    assert shown_ids(page) == history_ids(server.url)
    newest = cards(page).first
    expect(newest.locator(".badge")).to_have_text("delete")
    expect(newest.locator(".event__scope")).to_have_text("global/global")
    expect(newest.locator(".value__new")).to_have_text("deleted")
    expect(newest.locator(".value__old")).to_have_text('{\n  "name": "Ada"\n}')
    changed = cards(page, "user.1").nth(1)
    expect(changed.locator(".badge")).to_have_text("set")
    expect(changed.locator(".event__scope")).to_have_text("session/s-42")
    expect(changed.locator(".value__new")).to_contain_text('"role": "owner"')
    expect(changed.locator(".value__old")).to_contain_text('"role": "admin"')
    expect(changed.locator(".event__time")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    screenshot(page, "page.png")

    hostile = "<img src=x onerror=\"window.owned=1\">"
    put(server.url, hostile, {"html": "<script>window.owned=2</script>"})
    card = cards(page, hostile)
    expect(card).to_have_count(1)
    expect(card.locator(".value__new")).to_contain_text("<script>window.owned=2</script>")
    assert page.locator("#events img, #events script").count() == 0
    assert page.evaluate("window.owned") is None


def test_bad_pattern_shows_the_servers_message(server, open_page):
    refused = requests.get(server.url + "/api/v1/memory/events/sse",
                           params={"patterns": "user.*, [invalid"}, timeout=10)
    assert refused.status_code == 400
    message = refused.json()["message"]

    page = open_page(server)
    expect_status(page, "connected", "connected")
    page.get_by_label("Key patterns").fill("user.*, [invalid")
    press_connect(page)
    expect(page.get_by_role("alert")).to_have_text(f"{message} (invalid_pattern)")
    expect_status(page, "error", "error")
    screenshot(page, "page-bad-pattern.png")

    page.get_by_label("Key patterns").fill("user.*")
    press_connect(page)
    expect_status(page, "connected", "connected")
    expect(page.locator("#error")).to_be_hidden()
    put(server.url, "other.1", 1)
    put(server.url, "user.1", 2)
    expect(cards(page, "user.1")).to_have_count(1)
    expect(cards(page)).to_have_count(1)


def test_works_with_an_api_key(server_factory, open_page):
    server = server_factory(env={"MEMORY_API_KEY": API_KEY, "MEMORY_HEARTBEAT_SECONDS": "0.5"})
    page = open_page(server)
    expect_status(page, "error", "error")
    expect(page.locator("#error")).to_contain_text("A valid API key is required")
    expect(page.get_by_label("API key")).to_be_focused()

    page.get_by_label("API key").fill(API_KEY)
    press_connect(page)
    expect_status(page, "connected", "connected")
    with requests.Session() as session:
        session.headers["X-API-Key"] = API_KEY
        put(server.url, "secret.plan", {"step": 1}, session=session)
    expect(cards(page, "secret.plan")).to_have_count(1)
    assert API_KEY not in page.url
    assert page.evaluate("localStorage.length") == 0


@pytest.mark.parametrize("worker_class", ["gevent", "gthread"])
def test_reconnects_across_a_restart_and_shows_each_event_once(server_factory, open_page,
                                                               worker_class):
    server = server_factory(worker_class=worker_class, env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    page = open_page(server)
    expect_status(page, "connected", "connected")
    put(server.url, "before", 1)
    expect(cards(page, "before")).to_have_count(1)

    server.stop()
    expect_status(page, "reconnecting", "reconnecting…")
    server.start()
    expect_status(page, "connected", "connected")
    put(server.url, "after", 2)
    put(server.url, "last", 3)
    expect(cards(page, "last")).to_have_count(1)
    expect(cards(page, "after")).to_have_count(1)
    expect(cards(page, "before")).to_have_count(1)
    assert shown_ids(page) == history_ids(server.url)


def test_resumes_where_each_stream_ended(server_factory, open_page):
    """Streams end by themselves here; the page must resume from each one's ``last_id``.

    The log is empty when the page connects, so it has no id of its own to resume from: a page
    that let the browser reconnect on its own would start the next stream at the server's head
    and lose what was written in between, or show it twice if it opened a stream of its own too.
    """
    server = server_factory(env={"MEMORY_STREAM_MAX_SECONDS": "1",
                                 "MEMORY_HEARTBEAT_SECONDS": "0.5"})
    page = open_page(server)
    expect_status(page, "connected", "connected")
    for number in range(3):
        wait_until(lambda: server.metric("memory_events_disconnects_total",
                                         reason="lifetime") > number,
                   timeout=20, message=f"stream end {number + 1}")
        put(server.url, f"between.{number}", number)
    expect(cards(page)).to_have_count(3)
    assert shown_ids(page) == history_ids(server.url)
    expect_status(page, "connected", "connected")


def test_reset_shows_a_notice_and_resyncs_current_values(server_factory, open_page, tmp_path):
    replaced_db = f"sqlite:///{tmp_path}/replaced.db"
    seeding = server_factory(db_url=replaced_db)
    put(seeding.url, "kept", {"v": 1})
    put(seeding.url, "other.key", {"v": 2})
    put(seeding.url, "kept", {"v": 3}, scope="actor", scope_id="a-1")
    seeding.stop()

    server = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    page = open_page(server)
    page.get_by_label("Scope", exact=True).select_option("global")
    page.get_by_label("Key patterns").fill("kept, old.?")
    press_connect(page)
    expect_status(page, "connected", "connected")
    for number in range(4):
        put(server.url, f"old.{number}", number)
    expect(cards(page)).to_have_count(4)

    # The same address now serves a log whose newest id is below the one the page resumes from.
    server.stop()
    replacement = server_factory(db_url=replaced_db, port=server.port)
    expect(page.locator("#reset")).to_contain_text("its log was replaced")
    rows = page.locator("#snapshot-rows > tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("kept")
    expect(rows.first).to_contain_text('{"v":1}')
    expect_status(page, "connected", "connected")

    # Its id is not above the one the page had seen: the page must not take it for a repeat.
    put(replacement.url, "kept", {"v": 4})
    expect(cards(page, "kept")).to_have_count(1)
    expect(cards(page, "kept").locator(".value__old")).to_contain_text('"v": 1')
    screenshot(page, "page-reset.png")


def test_readable_at_phone_width(server, open_page):
    page = open_page(server, width=360, height=740)
    expect_status(page, "connected", "connected")
    put(server.url, "agent.notes." + "unbroken" * 20, {"text": "word" * 120})
    expect(cards(page)).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    screenshot(page, "page-phone.png")
