"""The console in a real browser: Debian's chromium driven by Playwright, against ``watchtower
serve`` and a real ``watchtower worker`` process on Redis and a SQLite ledger.

A user logs in with the token, sees the counts the worker produced, opens a
failed job and its traceback, presses Retry and sees the new job complete,
pauses and resumes a worker and sees its row change; another site's form,
posted with the session cookie, is refused; no page shows a redacted secret.

The pages' screenshots in the README come from these tests: set
``WT_TEST_SCREENSHOTS=1`` to write them to ``docs/console-*.png`` (otherwise
they go to the test's temporary folder).  Chromium is Debian's
(``/usr/bin/chromium``, installed by .ci/run); ``playwright install`` is
never needed.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

from tests.support.checkout import ROOT
from tests.support.lab import Lab
from tests.support.polling import DEADLINE
from tests.support.servers import unique
from tests.support.web_api import TOKEN, ServedAPI, serve_api
from watchtower.models import Job
from watchtower.statuses import JobStatus, WorkerStatus

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SECRET = "hunter2-never-shown"
#: Milliseconds the browser waits for what a page shows (the pages refresh every 3 s).
WAIT_MS = int(DEADLINE * 1000)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def served(lab: Lab) -> Iterator[ServedAPI]:
    """``watchtower serve`` with a token, retrying through the test app's broker."""
    server = serve_api(lab.environment(WATCHTOWER_API_TOKEN=TOKEN), "--app", "apps.web")
    yield server
    assert server.stop() == 0


@pytest.fixture
def context(chromium: Browser) -> Iterator[BrowserContext]:
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(WAIT_MS)
    yield context
    context.close()


class Shots:
    """Where screenshots go: docs/ when WT_TEST_SCREENSHOTS is set, else the test's folder."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder = ROOT / "docs" if os.environ.get("WT_TEST_SCREENSHOTS") else tmp_path

    def take(self, page: Page, name: str, **options: Any) -> Path:
        path = self.folder / f"console-{name}.png"
        page.screenshot(path=str(path), **options)
        assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path)


class Watched:
    """Every page and fragment the browser received, to check what they show."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.bodies: list[tuple[str, str]] = []
        page.on("response", self._keep)
        self.base_url = base_url

    def _keep(self, response: Any) -> None:
        if response.url.startswith(self.base_url) and "text/html" in response.headers.get("content-type", ""):
            try:
                self.bodies.append((response.url, response.text()))
            except Exception:  # a redirect has no body
                pass


def log_in(page: Page, served: ServedAPI) -> None:
    page.goto(served.base_url + "/watchtower/")
    expect(page).to_have_url(f"{served.base_url}/watchtower/console/login?next=%2Fwatchtower%2Fconsole")
    page.get_by_label("API token").fill("not-the-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-error")).to_have_text("That is not this console's token.")
    page.get_by_label("API token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(served.base_url + "/watchtower/console")
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")


def tile(page: Page, selector: str) -> Any:
    return page.locator(f"{selector} dd")


def test_log_in_see_the_workers_counts_open_a_failure_and_retry_it(
    lab: Lab, served: ServedAPI, context: BrowserContext, shots: Shots
) -> None:
    _, worker_id = lab.start(lab.queue, app="apps.web")
    done = [lab.send("work", unique("t")) for _ in range(3)]
    token = unique("t")
    failed_id = lab.send("flaky", token, password=SECRET)
    for message_id in done:
        lab.wait_job(message_id, JobStatus.COMPLETED)
    lab.wait_job(failed_id, JobStatus.FAILED)

    page = context.new_page()
    watched = Watched(page, served.base_url)
    log_in(page, served)
    expect(tile(page, '[data-status="completed"]')).to_have_text("3")
    expect(tile(page, '[data-status="failed"]')).to_have_text("1")
    expect(tile(page, '[data-stat="failed-last-hour"]')).to_have_text("1")
    expect(tile(page, '[data-stat="throughput"]')).to_have_text("4")
    expect(tile(page, '[data-worker-status="running"]')).to_have_text("1")
    # The broker's own count: the failed message is its one dead letter.
    expect(page.locator(f'tr[data-queue="{lab.queue}"] [data-depth="dead"]')).to_have_text("1")
    # The dashboard refreshes itself: a job finished now shows without a reload.
    lab.wait_job(lab.send("work", unique("t")), JobStatus.COMPLETED)
    expect(tile(page, '[data-status="completed"]')).to_have_text("4")
    shots.take(page, "dashboard", full_page=True)

    page.get_by_role("navigation", name="Console").get_by_role("link", name="Failed").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Failed jobs")
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=failed_id))
    expect(row).to_contain_text("flaky")
    shots.take(page, "failed")
    row.get_by_role("link", name=failed_id).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {failed_id}")
    expect(page.locator("#job-status")).to_have_text("failed")
    expect(page.locator("#traceback")).to_contain_text(f"RuntimeError: not fixed yet ({token})")
    expect(page.locator("#payload")).to_contain_text('"password": "[redacted]"')
    expect(page.locator("#job-facts")).to_contain_text(worker_id)
    shots.take(page, "job", full_page=True)

    lab.redis.set(f"{lab.namespace}:t:fixed:{token}", 1)
    page.get_by_role("button", name="Retry", exact=True).click()
    outcome = page.locator("#outcome")
    expect(outcome).to_contain_text(f"Job {failed_id} was sent again to queue {lab.queue} as job")
    new_id = Job.get(Job.message_id == failed_id).retried_by
    assert new_id is not None
    expect(page.locator("#retried-by")).to_have_text(new_id)  # the page's live part refreshed
    outcome.get_by_role("link", name="Open the new job").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {new_id}")
    expect(page.locator("#retried-from")).to_have_text(failed_id)
    # Pending or running when the page opened; the page refreshes until it completes.
    expect(page.locator("#job-status")).to_have_text("completed")
    assert lab.wait_job(new_id, JobStatus.COMPLETED).retried_from == failed_id
    assert lab.runs(token) == 2

    page.goto(f"{served.base_url}/watchtower/console/jobs?search=flaky")
    expect(page.get_by_role("link", name=new_id)).to_be_visible()
    assert len(watched.bodies) >= 8
    for url, body in watched.bodies:
        assert SECRET not in body, url


def test_pause_and_resume_a_worker_and_see_its_row_change(
    lab: Lab, served: ServedAPI, context: BrowserContext, shots: Shots
) -> None:
    _, worker_id = lab.start(lab.queue, app="apps.web")
    lab.wait_status(worker_id, WorkerStatus.RUNNING)
    lab.wait_job(lab.send("work", unique("t")), JobStatus.COMPLETED)
    page = context.new_page()
    log_in(page, served)
    page.get_by_role("link", name="Workers").first.click()
    row = page.locator(f'tr[data-worker="{worker_id}"]')
    expect(row).to_have_attribute("data-status", "running")
    expect(row).to_contain_text(lab.queue)
    shots.take(page, "workers")

    row.get_by_role("button", name="Pause").click()
    expect(page.locator("#outcome")).to_contain_text(f"Worker {worker_id} was told to pause")
    expect(row).to_have_attribute("data-status", "paused")
    expect(row.get_by_role("button", name="Resume")).to_be_visible()
    assert lab.wait_status(worker_id, WorkerStatus.PAUSED)

    row.get_by_role("button", name="Resume").click()
    expect(page.locator("#outcome")).to_contain_text(f"Worker {worker_id} was told to resume")
    expect(row).to_have_attribute("data-status", "running")
    waiting = lab.send("work", unique("t"))
    assert lab.wait_job(waiting, JobStatus.COMPLETED).worker_id == worker_id


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    """Another site: its page posts a form to the console as soon as it loads."""

    form = ""

    def do_GET(self) -> None:
        body = f"<!doctype html><body onload='document.forms[0].submit()'>{self.form}</body>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_another_sites_form_posted_with_the_session_cookie_is_refused(
    lab: Lab, served: ServedAPI, context: BrowserContext
) -> None:
    lab.start(lab.queue, app="apps.web")
    failed_id = lab.send("flaky", unique("t"))
    lab.wait_job(failed_id, JobStatus.FAILED)
    page = context.new_page()
    log_in(page, served)
    retry = f"{served.base_url}/watchtower/console/failed/{failed_id}/retry"
    guessed = "A" * 43  # the attacker cannot read the CSRF cookie: it guesses
    _AttackerPage.form = (f"<form method=post action='{retry}'><input name=csrf value={guessed}>"
                          f"<input name=next value=/watchtower/console></form>")
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        # 127.0.0.1 on another port: another origin of the same site, so the
        # browser does send the Lax session cookie with the post.
        with page.expect_response(retry) as answered:
            page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        response = answered.value
        page.wait_for_url(retry, wait_until="load")  # the post's answer is the page now shown
        assert response.status == 403
        expect(page.locator(".error-text")).to_contain_text(
            "a POST from another site is refused (Sec-Fetch-Site: same-site)")
        assert "watchtower_session=" in response.request.all_headers().get("cookie", "")
        # From "localhost", another site for the browser: the cookie stays home.
        with page.expect_response(retry) as answered:
            page.goto(f"http://localhost:{attacker.server_address[1]}/")
        page.wait_for_url(retry, wait_until="load")
        assert answered.value.status == 401
        assert "watchtower_session=" not in answered.value.request.all_headers().get("cookie", "")
    finally:
        attacker.shutdown()
        attacker.server_close()
    assert Job.get(Job.message_id == failed_id).retried_by is None
    # The console's own page still works with the same session.
    page.goto(f"{served.base_url}/watchtower/console/jobs/{failed_id}")
    page.get_by_role("button", name="Retry", exact=True).click()
    expect(page.locator("#outcome")).to_contain_text(f"Job {failed_id} was sent again")


def test_the_pages_work_with_the_keyboard_and_on_a_phone(
    lab: Lab, served: ServedAPI, chromium: Browser, shots: Shots
) -> None:
    lab.start(lab.queue, app="apps.web")
    lab.wait_job(lab.send("flaky", unique("t")), JobStatus.FAILED)
    phone = chromium.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                 has_touch=True)
    phone.set_default_timeout(WAIT_MS)
    try:
        page = phone.new_page()
        page.goto(served.base_url + "/watchtower/console")
        # The keyboard: the login page opens on its token field; Enter sends it; on
        # every page the first Tab reaches the link that skips to the content.
        expect(page.get_by_label("API token")).to_be_focused()
        page.keyboard.type(TOKEN)
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")
        page.keyboard.press("Tab")
        expect(page.locator(":focus")).to_have_text("Skip to the content")
        page.keyboard.press("Enter")
        expect(page.locator("#main")).to_be_focused()
        for path in ("", "/jobs", "/failed", "/workers"):
            page.goto(f"{served.base_url}/watchtower/console{path}")
            problems = page.evaluate("""() => {
                const found = [];
                if (document.querySelectorAll("h1").length !== 1) found.push("not one h1");
                for (const field of document.querySelectorAll("input:not([type=hidden]), select")) {
                    if (!field.labels || field.labels.length === 0) found.push("no label: " + field.name);
                }
                for (const button of document.querySelectorAll("button")) {
                    if (!button.textContent.trim()) found.push("a button without a name");
                }
                if (document.documentElement.scrollWidth > window.innerWidth + 1)
                    found.push("wider than the screen: " + document.documentElement.scrollWidth);
                return found;
            }""")
            assert problems == [], (path, problems)
        page.goto(served.base_url + "/watchtower/console")
        shots.take(page, "phone")
    finally:
        phone.close()
