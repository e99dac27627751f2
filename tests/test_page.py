"""The live page in a real headless Chromium, against a real server."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from playwright.sync_api import Browser, Locator, Page, Route, expect, sync_playwright

from .api import MEMORY, history_ids, put
from .conftest import ROOT, Server, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "artifacts"
API_KEY = "page-test-key"
SCOPES = ["workflow", "session", "actor", "global"]

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

    def open_(server: Server, width: int = 1100, height: int = 850,
              setup: Callable[[Page], None] | None = None) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        visit = Visit(server, context.new_page())
        visit.page.on("pageerror", lambda error: visit.script_errors.append(str(error)))
        visit.page.on("request", lambda request: visit.requested.append(request.url))
        visits.append(visit)
        if setup is not None:
            setup(visit.page)
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
    found = page.locator("#events > li.event")
    if key is None:
        return found
    return found.filter(has=page.locator(".event__key", has_text=re.compile(
        "^" + re.escape(key) + "$")))


def shown_ids(page: Page) -> list[int]:
    """Ids of the events on the page, oldest first."""
    return [int(i) for i in reversed(cards(page).evaluate_all("els => els.map(e => e.dataset.id)"))]


Entry = tuple[str, str, str, object]  # key, scope, scope id, value


def state_rows(page: Page) -> Locator:
    return page.locator("#state-rows > tr")


def shown_state(page: Page) -> list[Entry]:
    """The state view's records, in the order shown."""
    rows = state_rows(page).evaluate_all(
        "rows => rows.map(row => [row.dataset.key, row.dataset.scope, row.dataset.scopeId,"
        " row.querySelector('.record__value').textContent])")
    return [(key, scope, scope_id, json.loads(value)) for key, scope, scope_id, value in rows]


def stored_state(base_url: str, scope: str | None = None, scope_id: str | None = None,
                 keep: Callable[[str], bool] = lambda key: True) -> list[Entry]:
    """What the server holds, sorted as the page sorts: by key, scope (most specific first),
    scope id."""
    found: list[Entry] = []
    for name in [scope] if scope else SCOPES:
        listed = requests.get(base_url + "/api/v1/memory/list",
                              params={"scope": name, "scope_id": scope_id}, timeout=10)
        assert listed.status_code == 200, listed.text
        found += [(r["key"], r["scope"], r["scope_id"], r["data"]) for r in listed.json()
                  if keep(r["key"])]
    return sorted(found, key=lambda entry: (entry[0], SCOPES.index(entry[1]), entry[2]))


def expect_state(page: Page, expected: Callable[[], list[Entry]] | list[Entry]) -> None:
    """The state view comes to show exactly ``expected`` (a list, or what a call returns)."""
    want = expected if callable(expected) else (lambda: expected)
    last: dict[str, object] = {}

    def matches() -> bool:
        last["shown"], last["wanted"] = shown_state(page), want()
        return last["shown"] == last["wanted"]

    try:
        wait_until(matches, timeout=20, interval=0.1, message="the state view")
    except AssertionError as failure:
        raise AssertionError(f"{failure}: shown {last['shown']}, wanted {last['wanted']}") from None
    count = len(last["wanted"])  # type: ignore[arg-type]
    expect(page.locator("#state-count")).to_have_text(f"{count} {'key' if count == 1 else 'keys'}")


def delete(base_url: str, key: str, **extra: object) -> None:
    deleted = requests.post(base_url + "/api/v1/memory/delete", json={"key": key, **extra},
                            timeout=10)
    assert deleted.status_code == 204, deleted.text


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
    delete(server.url, "user.1")

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
    expect_state(page, [("task.7", "workflow", "wf-1", "queued"),
                        ("user.1", "session", "s-42", {"name": "Ada", "role": "owner"})])
    expect(state_rows(page).first.locator(".record__updated")).to_have_text(
        re.compile(r"^\d\d:\d\d:\d\d\.\d{3}$"))
    # On a wide screen the state sits beside the feed, both starting at the same height.
    state, feed = page.locator("#state").bounding_box(), page.locator(".feed").bounding_box()
    assert state and feed and state["x"] + state["width"] <= feed["x"]
    assert abs(state["y"] - feed["y"]) < 1
    screenshot(page, "page.png")

    hostile = "<img src=x onerror=\"window.owned=1\">"
    put(server.url, hostile, {"html": "<script>window.owned=2</script>"})
    card = cards(page, hostile)
    expect(card).to_have_count(1)
    expect(card.locator(".value__new")).to_contain_text("<script>window.owned=2</script>")
    expect(state_rows(page)).to_have_count(3)
    expect(state_rows(page).first.locator(".record__key")).to_have_text(hostile)
    expect(state_rows(page).first.locator(".record__value")).to_have_text(
        '{"html":"<script>window.owned=2</script>"}')
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.owned") is None


def test_events_show_who_made_them_and_why(server, open_page):
    page = open_page(server)
    expect_status(page, "connected", "connected")
    made = requests.post(server.url + MEMORY + "/set", timeout=10, json={
        "key": "by.agent", "data": 1, "scope": "global"}, headers={
        "X-Agent-Node-ID": "node-7", "X-Actor-ID": "actor-3", "X-Workflow-ID": "wf-9"})
    assert made.status_code == 200, made.text
    put(server.url, "by.nobody", 2)
    put(server.url, "short.lived", 3, ttl_seconds=0.5)

    def authors(card: Locator) -> list[list[str]]:
        return card.locator(".event__meta > div").evaluate_all(
            "entries => entries.map(e => [e.querySelector('dt').textContent,"
            " e.querySelector('dd').textContent])")

    expect(cards(page, "by.nobody")).to_have_count(1)
    assert authors(cards(page, "by.agent")) == [["agent", "node-7"], ["actor", "actor-3"],
                                                ["workflow", "wf-9"]]
    expect(cards(page, "by.agent").locator(".event__meta")).to_be_visible()
    expect(cards(page, "by.nobody").locator(".event__meta")).to_be_hidden()
    for key in ("by.agent", "by.nobody"):
        expect(cards(page, key).locator(".event__reason")).to_be_hidden()
    expect(cards(page, "short.lived")).to_have_count(2)  # the set, then the expiry's delete
    expired = cards(page, "short.lived").first
    expect(expired.locator(".badge")).to_have_text("delete")
    expect(expired.locator(".event__reason")).to_have_text("expired")
    expect(cards(page, "short.lived").last.locator(".event__reason")).to_be_hidden()


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
    expect_state(page, [("user.1", "global", "global", 2)])


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
    expect_state(page, [("secret.plan", "global", "global", {"step": 1})])
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
    expect_state(page, lambda: stored_state(server.url))
    expect(page.locator("#reset")).to_be_hidden()


def test_resumes_where_each_stream_ended(server_factory, open_page):
    """Streams end by themselves here; the page must reopen each from the one's ``last_id``.

    Each change is written while the page is between two streams (when its next stream is
    requested, before the request reaches the server), so a page that opened without the
    resume point would miss it or show it twice. The log is empty when the page connects, so
    the first resume point is the snapshot's end. A page that left reconnecting to the browser
    would reuse the first stream's address, without ``last_event_id``.
    """
    server = server_factory(env={"MEMORY_STREAM_MAX_SECONDS": "1",
                                 "MEMORY_HEARTBEAT_SECONDS": "0.5"})
    opened: list[str] = []

    def write_between_streams(route: Route) -> None:
        opened.append(route.request.url)
        if 1 < len(opened) <= 4:
            put(server.url, f"between.{len(opened) - 2}", len(opened) - 2)
        route.continue_()

    page = open_page(server, setup=lambda page: page.route("**/api/v1/memory/events/sse?*",
                                                           write_between_streams))
    expect_status(page, "connected", "connected")
    expect(cards(page)).to_have_count(3)
    resumed_from = [parse_qs(urlsplit(url).query).get("last_event_id") for url in opened[:4]]
    assert resumed_from == [None, ["0"], ["1"], ["2"]]
    assert all(parse_qs(urlsplit(url).query)["snapshot"] == ["1"] for url in opened)
    assert shown_ids(page) == history_ids(server.url)
    expect_state(page, lambda: stored_state(server.url))
    expect(page.locator("#reset")).to_be_hidden()
    expect_status(page, "connected", "connected")


def test_unresumable_stream_shows_a_notice_and_the_exact_state(server_factory, open_page,
                                                                tmp_path):
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
    expect_state(page, [(f"old.{n}", "global", "global", n) for n in range(4)])
    expect(page.locator("#reset")).to_be_hidden()

    # The same address now serves a log whose newest id is below the one the page resumes
    # from: the server cannot resume and sends a fresh snapshot, which replaces the state.
    server.stop()
    replacement = server_factory(db_url=replaced_db, port=server.port)
    expect(page.locator("#reset")).to_contain_text("changes made in between are missing")
    expect(page.get_by_role("alert").filter(has_text="could not resume")).to_be_visible()
    expect_state(page, [("kept", "global", "global", {"v": 1})])
    expect(page.locator("#events > li.gap")).to_have_count(1)
    expect(cards(page)).to_have_count(4)  # what was shown stays, below the gap
    expect_status(page, "connected", "connected")

    # Its id is not above the one the page had seen: the page must not take it for a repeat.
    kept_row = state_rows(page).first.element_handle()
    put(replacement.url, "kept", {"v": 4})
    expect(cards(page, "kept")).to_have_count(1)
    expect(cards(page, "kept").locator(".value__old")).to_contain_text('"v": 1')
    expect(page.locator("#events > li").first).to_have_class(re.compile(r"\bevent\b"))
    expect_state(page, [("kept", "global", "global", {"v": 4})])
    assert kept_row.evaluate("row => row.isConnected")
    screenshot(page, "page-reset.png")

    page.get_by_role("button", name="Dismiss").click()
    expect(page.locator("#reset")).to_be_hidden()


def test_state_shows_records_that_existed_before_the_page_opened(server, open_page):
    put(server.url, "zeta", [1, 2, 3])
    put(server.url, "alpha", {"name": "Ada"}, scope="session", scope_id="s-1")
    put(server.url, "alpha", "global one")
    put(server.url, "alpha", "the actor's", scope="actor", scope_id="a-9")
    put(server.url, "gone", True)
    put(server.url, "mid", None, scope="workflow", scope_id="wf-2")
    delete(server.url, "gone")
    for number in range(25):  # more changes than the feed loads from history
        put(server.url, "counter", number)

    def write_before_history(route: Route) -> None:
        """A change the feed gets twice, live and in the recent history it loads after the
        snapshot, and must show once."""
        put(server.url, "late", "after the snapshot")
        route.continue_()

    page = open_page(server, setup=lambda page: page.route(
        re.compile(r"/events/history\?(.*&)?limit=20(&|$)"), write_before_history, times=1))
    expect_status(page, "connected", "connected")
    expect_state(page, [("alpha", "session", "s-1", {"name": "Ada"}),
                        ("alpha", "actor", "a-9", "the actor's"),
                        ("alpha", "global", "global", "global one"),
                        ("counter", "global", "global", 24),
                        ("late", "global", "global", "after the snapshot"),
                        ("mid", "workflow", "wf-2", None),
                        ("zeta", "global", "global", [1, 2, 3])])
    assert shown_state(page) == stored_state(server.url)
    row = state_rows(page).filter(has_text="wf-2")
    expect(row.locator(".record__scope")).to_have_text("workflow/wf-2")
    expect(row.locator(".record__value")).to_have_text("null")
    # The feed holds the most recent history, newest first, each event once.
    expect(cards(page, "late")).to_have_count(1)
    expect(cards(page)).to_have_count(20)
    assert shown_ids(page) == history_ids(server.url)[-20:]
    expect(page.locator("#reset")).to_be_hidden()


def test_state_changes_rows_in_place_and_removes_deleted_keys(server, open_page):
    put(server.url, "b.key", "first")
    put(server.url, "d.key", "doomed")
    put(server.url, "b.key", "in the session", scope="session", scope_id="s-1")
    put(server.url, "b.key", "in another session", scope="session", scope_id="s-2")
    page = open_page(server)
    expect_state(page, [("b.key", "session", "s-1", "in the session"),
                        ("b.key", "session", "s-2", "in another session"),
                        ("b.key", "global", "global", "first"),
                        ("d.key", "global", "global", "doomed")])
    kept = state_rows(page).nth(2).element_handle()

    put(server.url, "b.key", {"second": True})
    put(server.url, "c.key", "new")
    put(server.url, "a.key", "newest")
    expect_state(page, [("a.key", "global", "global", "newest"),
                        ("b.key", "session", "s-1", "in the session"),
                        ("b.key", "session", "s-2", "in another session"),
                        ("b.key", "global", "global", {"second": True}),
                        ("c.key", "global", "global", "new"),
                        ("d.key", "global", "global", "doomed")])
    assert kept.evaluate("row => row.isConnected && row.dataset.scope === 'global'")
    assert kept.evaluate("row => row.querySelector('.record__value').textContent") == \
        '{"second":true}'
    version = put(server.url, "b.key", "third")["version"]
    expect(state_rows(page).nth(3)).to_have_attribute("data-version", version)
    assert kept.evaluate("row => row.isConnected")

    delete(server.url, "d.key")
    delete(server.url, "b.key", scope="session", scope_id="s-1")  # the others stay
    expect_state(page, [("a.key", "global", "global", "newest"),
                        ("b.key", "session", "s-2", "in another session"),
                        ("b.key", "global", "global", "third"),
                        ("c.key", "global", "global", "new")])
    assert kept.evaluate("row => row.isConnected")
    delete(server.url, "a.key")
    delete(server.url, "b.key")
    delete(server.url, "b.key", scope="session", scope_id="s-2")
    delete(server.url, "c.key")
    expect_state(page, [])
    expect(page.locator("#state-empty")).to_be_visible()
    put(server.url, "again", 1)
    expect_state(page, [("again", "global", "global", 1)])
    expect(page.locator("#state-empty")).to_be_hidden()


def test_state_stays_exact_across_a_restart(server_factory, open_page):
    server = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    put(server.url, "stays", "as it was")
    put(server.url, "changes", "before")
    put(server.url, "goes", "soon")
    page = open_page(server)
    expect_state(page, lambda: stored_state(server.url))
    expect(cards(page)).to_have_count(3)

    # While the page's server is down, another one on the same database takes changes.
    server.stop()
    expect_status(page, "reconnecting", "reconnecting…")
    meanwhile = server_factory(env={"MEMORY_HEARTBEAT_SECONDS": "0.5"})
    put(meanwhile.url, "changes", {"after": True})
    put(meanwhile.url, "arrives", [1], scope="workflow", scope_id="wf-1")
    delete(meanwhile.url, "goes")
    meanwhile.stop()

    server.start()
    expect_status(page, "connected", "connected")
    expect_state(page, [("arrives", "workflow", "wf-1", [1]),
                        ("changes", "global", "global", {"after": True}),
                        ("stays", "global", "global", "as it was")])
    expect(cards(page)).to_have_count(6)
    assert shown_ids(page) == history_ids(server.url)
    expect(page.locator("#reset")).to_be_hidden()  # resumed: nothing was missed

    put(server.url, "stays", "changed at last")
    delete(server.url, "arrives", scope="workflow", scope_id="wf-1")
    expect_state(page, lambda: stored_state(server.url))
    assert len(shown_state(page)) == 2


def test_state_follows_the_pages_filter(server, open_page):
    def in_session(key: str, data: object, scope_id: str = "s-1") -> None:
        put(server.url, key, data, scope="session", scope_id=scope_id)

    in_session("user.1", "match")
    in_session("task.7", "match too")
    in_session("user.1", "other session", scope_id="s-2")
    in_session("user.a/b", "a star stops at a slash")
    in_session("task.77", "? is one character")
    in_session("note", "no pattern matches")
    put(server.url, "user.2", "global, not the session")
    put(server.url, "user.3", "an actor's", scope="actor", scope_id="s-1")

    page = open_page(server)
    expect_state(page, lambda: stored_state(server.url))  # no filter: everything
    page.get_by_label("Scope", exact=True).select_option("session")
    page.get_by_label("Scope ID").fill("s-1")
    page.get_by_label("Key patterns").fill(" user.*,  , task.? ")
    press_connect(page)
    expect_status(page, "connected", "connected")
    expected = [("task.7", "session", "s-1", "match too"), ("user.1", "session", "s-1", "match")]
    expect_state(page, expected)
    assert expected == stored_state(server.url, "session", "s-1", keep=lambda key: bool(
        re.fullmatch(r"user\.[^/]*|task\.[^/]", key)))

    in_session("user.9", "a new match")
    in_session("user.9", "elsewhere", scope_id="s-2")
    in_session("other", "no match")
    put(server.url, "user.9", "global")
    in_session("task.7", "changed")
    delete(server.url, "user.1", scope="session", scope_id="s-2")  # not the one shown
    expect_state(page, [("task.7", "session", "s-1", "changed"),
                        ("user.1", "session", "s-1", "match"),
                        ("user.9", "session", "s-1", "a new match")])
    expect(cards(page, "user.9")).to_have_count(1)

    page.reload()  # the filter is in the address
    expect(page.get_by_label("Scope ID")).to_have_value("s-1")
    expect_state(page, [("task.7", "session", "s-1", "changed"),
                        ("user.1", "session", "s-1", "match"),
                        ("user.9", "session", "s-1", "a new match")])


def test_readable_at_phone_width(server, open_page):
    put(server.url, "agent.notes." + "unbroken" * 20, {"text": "word" * 120})
    page = open_page(server, width=360, height=740)
    expect_status(page, "connected", "connected")
    put(server.url, "agent.plan." + "unbroken" * 20, ["step" * 60])
    expect(cards(page)).to_have_count(2)
    expect(state_rows(page)).to_have_count(2)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # On a narrow screen the state comes above the feed, each within the screen.
    state, feed = page.locator("#state").bounding_box(), page.locator(".feed").bounding_box()
    assert state and feed and state["y"] + state["height"] <= feed["y"]
    assert page.locator("#state .table-wrap").evaluate(
        "wrap => wrap.scrollWidth <= wrap.clientWidth"), "the state must not scroll sideways"
    for row in state_rows(page).all():  # each record on two lines: its value below its key
        key, value = row.locator(".record__key").bounding_box(), \
            row.locator(".record__value").bounding_box()
        assert key and value and value["y"] >= key["y"] + key["height"]
        assert value["x"] >= 0 and value["x"] + value["width"] <= 360
    screenshot(page, "page-phone.png")
