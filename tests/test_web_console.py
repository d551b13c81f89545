"""The console's pages and forms through the real WSGI app: who gets in, forgery refused,
what the pages show (the API's data, redacted), what the actions do and say.

The browser here is a cookie-keeping test client (tests/support/console_client.py);
tests/test_web_console_browser.py drives a real chromium against real workers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.support.checkout import ROOT
from tests.support.console_client import BROWSER_ACCEPT, CONSOLE, Browser, console_app, csrf_of, logged_in, text_of
from tests.support.host_apps import log_in
from tests.support.servers import REDIS_URL
from tests.support.web_api import AUTH, TOKEN, seed_job, table_fingerprint, web_settings
from watchtower import store
from watchtower.bus import supervisor_inbox_key
from watchtower.clock import now_ms
from watchtower.config import load_settings
from watchtower.errors import ConfigError
from watchtower.models import Job, Worker
from watchtower.statuses import JobStatus, WorkerStatus
from watchtower.web import create_app
from watchtower.web.session import SESSION_SECONDS, SessionSigner

SECRET = "hunter2-do-not-show"


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[str]:
    db = store.connect(sqlite_url)
    yield sqlite_url
    db.close()


@pytest.fixture
def broker(redis_namespace: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    yield broker
    broker.close()


def seed_worker(worker_id: str = "host-1-100", status: str = WorkerStatus.RUNNING, **fields: Any) -> None:
    Worker.insert(worker_id=worker_id, supervisor="default", hostname="host-1", pid=100, status=status,
                  queues='["default"]', started_at=now_ms() - 60_000, last_heartbeat=now_ms(),
                  memory_rss=64 * 2**20, **fields).execute()


# Getting in ------------------------------------------------------------------


def test_a_browser_at_the_prefix_gets_the_dashboard_and_json_clients_see_no_change(ledger: str,
                                                                                   redis_namespace: str) -> None:
    app = falcon.testing.TestClient(console_app(ledger, redis_namespace))
    for path in ("/watchtower/", "/watchtower"):
        sent = app.simulate_get(path, headers={"Accept": BROWSER_ACCEPT})
        assert sent.status_code == 303 and sent.headers["location"] == CONSOLE
    # A JSON client (or one that accepts anything) gets what it got before.
    for headers in ({}, {"Accept": "application/json"}, {"Accept": "*/*"}):
        assert app.simulate_get("/watchtower/", headers=headers).status_code == 401
        answer = app.simulate_get("/watchtower/", headers={**AUTH, **headers})
        assert answer.status_code == 404 and answer.json["description"].startswith("nothing answers at this path")
    assert app.simulate_post("/watchtower/", headers={**AUTH, "Accept": BROWSER_ACCEPT}).status_code == 404
    assert app.simulate_get("/watchtower/jobs", headers={**AUTH, "Accept": BROWSER_ACCEPT}).json["data"] == []


def test_with_a_token_the_pages_want_a_login_that_trades_it_for_a_session_cookie(ledger: str,
                                                                                redis_namespace: str) -> None:
    browser = Browser(console_app(ledger, redis_namespace))
    for page in ("", "/jobs?status=failed", "/failed", "/workers", "/jobs/abc-1"):
        sent = browser.get(CONSOLE + page)
        assert sent.status_code == 303, page
        assert sent.headers["location"].startswith(f"{CONSOLE}/login?next=")
    form = browser.get(browser.get(CONSOLE + "/jobs?status=failed").headers["location"])
    assert form.status_code == 200 and 'name="token"' in form.text and 'type="password"' in form.text
    assert 'name="next" value="/watchtower/console/jobs?status=failed"' in form.text

    refused = browser.log_in("not-the-token", "/watchtower/console/jobs?status=failed")
    assert refused.status_code == 401
    assert "That is not this console's token." in text_of(refused.text)
    assert "watchtower_session" not in browser.cookies

    answer = browser.log_in(TOKEN, "/watchtower/console/jobs?status=failed")
    assert answer.status_code == 303 and answer.headers["location"] == "/watchtower/console/jobs?status=failed"
    cookie = answer.cookies["watchtower_session"]
    assert cookie.http_only and cookie.same_site == "Lax" and cookie.path == CONSOLE
    assert cookie.max_age == SESSION_SECONDS and not cookie.secure  # plain HTTP here
    assert TOKEN not in cookie.value
    page = browser.get(CONSOLE + "/jobs?status=failed")
    assert page.status_code == 200 and "<h1>Jobs: failed</h1>" in page.text

    # Logging out forgets it.
    assert browser.act(CONSOLE + "/logout").status_code == 303
    assert "watchtower_session" not in browser.cookies
    assert browser.get(CONSOLE).status_code == 303


@pytest.mark.parametrize("https", [{"protocol": "https"}, {"headers": {"X-Forwarded-Proto": "https"}}])
def test_over_https_the_cookies_are_secure(ledger: str, redis_namespace: str, https: dict[str, Any]) -> None:
    browser = Browser(console_app(ledger, redis_namespace))
    extra = https.get("headers", {})
    page = browser.get(CONSOLE + "/login", headers=extra, **{k: v for k, v in https.items() if k != "headers"})
    assert page.cookies["watchtower_csrf"].secure
    answer = browser.post(CONSOLE + "/login", {"csrf": csrf_of(page.text), "token": TOKEN}, headers=extra,
                          **{k: v for k, v in https.items() if k != "headers"})
    assert answer.status_code == 303 and answer.cookies["watchtower_session"].secure


def test_the_session_opens_the_pages_only_never_the_json_api(ledger: str, redis_namespace: str) -> None:
    browser = logged_in(console_app(ledger, redis_namespace))
    assert browser.get(CONSOLE + "/jobs").status_code == 200
    for path in ("/watchtower/jobs", "/watchtower/api/poll", "/watchtower/workers"):
        answer = browser.get(path, headers={"Accept": "application/json"})
        assert answer.status_code == 401, path
    assert browser.post("/watchtower/workers/start", {"queue": "default"}).status_code == 401


def test_a_forged_expired_or_foreign_session_is_no_session(ledger: str, redis_namespace: str) -> None:
    app = console_app(ledger, redis_namespace)
    good = SessionSigner(TOKEN).issue()
    expiry, nonce, signature = good.split(".")
    forged = [
        f"{int(expiry) + 3600}.{nonce}.{signature}",  # a longer life
        f"{expiry}.{nonce}.{signature[:-2]}AA",
        SessionSigner(TOKEN, clock=lambda: now_ms() / 1000 - SESSION_SECONDS - 1).issue(),  # expired
        SessionSigner("another-token").issue(),  # signed under another token (or before it changed)
        "", "garbage", "1.2", TOKEN,
    ]
    browser = Browser(app)
    for value in forged:
        browser.cookies["watchtower_session"] = value
        assert browser.get(CONSOLE).status_code == 303, value
    browser.cookies["watchtower_session"] = good
    assert browser.get(CONSOLE).status_code == 200
    # The bearer token works too (scripts, benchmarks): no cookie needed.
    assert Browser(app, **AUTH).get(CONSOLE).status_code == 200


def every_form(failed_id: str) -> list[tuple[str, dict[str, str]]]:
    """(path, fields) of every state change of the console."""
    return [
        (f"{CONSOLE}/failed/{failed_id}/retry", {}),
        (f"{CONSOLE}/failed/{failed_id}/delete", {}),
        (f"{CONSOLE}/failed/retry", {"queue": "default"}),
        (f"{CONSOLE}/workers/host-1-100/pause", {}),
        (f"{CONSOLE}/workers/host-1-100/stop", {}),
        (f"{CONSOLE}/workers/start", {"queue": "default"}),
        (f"{CONSOLE}/logout", {}),
        (f"{CONSOLE}/login", {"token": TOKEN}),
    ]


def test_every_form_needs_its_csrf_token_and_a_request_from_the_console_itself(
    ledger: str, redis_namespace: str, broker: RedisBroker
) -> None:
    failed = seed_job(status=JobStatus.FAILED, queue="default")
    seed_worker()
    browser = logged_in(console_app(ledger, redis_namespace, broker))
    bus = redis.Redis.from_url(REDIS_URL)
    before = table_fingerprint()
    token = browser.csrf()
    for path, fields in every_form(failed.message_id):
        for csrf in (None, "", token[:-1] + ("A" if token[-1] != "A" else "B"), "x" * 43):
            sent = {**fields, **({} if csrf is None else {"csrf": csrf})}
            answer = browser.post(path, sent)
            assert answer.status_code == 403, (path, csrf)
            assert "CSRF token is missing or out of date" in text_of(answer.text)
        # The right token from another site's page (or an old browser's foreign Origin).
        for elsewhere in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                          {"Sec-Fetch-Site": "cross-site", "Origin": "http://127.0.0.1"},
                          {"Sec-Fetch-Site": "", "Origin": "http://evil.example"}):
            headers = {key: value for key, value in elsewhere.items() if value}
            answer = browser.client.simulate_post(
                path, body="&".join(f"{k}={v}" for k, v in {**fields, "csrf": token}.items()),
                headers={**browser._headers(None), "Content-Type": "application/x-www-form-urlencoded",
                         "Host": "console.example", **headers},
            )
            assert answer.status_code == 403, (path, elsewhere)
            assert "from another site is refused" in text_of(answer.text)
    assert table_fingerprint() == before
    assert Worker.get_by_id("host-1-100").status == WorkerStatus.RUNNING
    assert bus.keys(f"{redis_namespace}:*") == []  # no command, no start request was sent
    assert "watchtower_session" in browser.cookies  # and nobody logged the browser out
    bus.close()


def test_without_a_token_the_console_answers_direct_loopback_clients_only_and_still_wants_csrf(
    ledger: str, redis_namespace: str, broker: RedisBroker
) -> None:
    failed = seed_job(status=JobStatus.FAILED)
    app = console_app(ledger, redis_namespace, broker, **{"http.token": None})
    local = Browser(app)
    page = local.get(CONSOLE)
    assert page.status_code == 200 and "<h1>Dashboard</h1>" in page.text
    assert "Log out" not in page.text
    login = local.get(CONSOLE + "/login")
    assert "needs no login: it answers this machine only" in text_of(login.text)
    for remote, headers in (("203.0.113.9", {}), ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}),
                            ("127.0.0.1", {"Forwarded": "for=127.0.0.1"})):
        refused = Browser(app, remote_addr=remote).get(CONSOLE + "/jobs", headers=headers)
        assert refused.status_code == 403
        assert "answers direct clients on loopback only" in text_of(refused.text)
        assert refused.headers["content-type"].startswith("text/html")
    # A page of any site could make a local browser post to 127.0.0.1: the CSRF token stops it.
    retry = f"{CONSOLE}/failed/{failed.message_id}/retry"
    assert local.post(retry, {}).status_code == 403
    done = local.act(retry)
    assert done.status_code == 200, done.text
    assert Job.get_by_id(failed.id).retried_by is not None


def test_the_hosts_authorize_hook_decides_for_the_pages_too(ledger: str, redis_namespace: str,
                                                           broker: RedisBroker) -> None:
    failed = seed_job(status=JobStatus.FAILED)
    seen: list[tuple[str, str]] = []

    def authorize(req: falcon.Request) -> bool:
        seen.append((req.method, req.path))
        role = req.cookies.get("host-role")
        return role == "admin" or (role == "viewer" and req.method in ("GET", "HEAD"))

    api = create_app(web_settings(ledger, redis_namespace, **{"http.token": None}), authorize=authorize,
                     broker=broker)
    stranger = Browser(api)
    refused = stranger.get(CONSOLE)
    assert refused.status_code == 403 and "authorize hook refused" in text_of(refused.text)
    assert "sign in there" in text_of(stranger.get(CONSOLE + "/login").text)
    viewer = Browser(api)
    viewer.cookies["host-role"] = "viewer"
    assert viewer.get(CONSOLE + "/failed").status_code == 200
    retry = f"{CONSOLE}/failed/{failed.message_id}/retry"
    refused = viewer.act(retry)
    assert refused.status_code == 403 and "authorize hook refused" in text_of(refused.text)
    admin = Browser(api)
    admin.cookies["host-role"] = "admin"
    assert admin.post(retry, {}).status_code == 403  # the hook's yes still needs the form's token
    assert admin.act(retry).status_code == 200
    assert ("GET", "/console/failed") in seen and ("POST", "/console/failed/" + failed.message_id + "/retry") in seen


# What the pages show ------------------------------------------------------------


def ids_on(page: str) -> list[str]:
    """Job ids in the order the page's table lists them."""
    return re.findall(r'<td><a href="/watchtower/console/jobs/([^"]+)" class="mono">', page)


@pytest.mark.parametrize("query", ["", "?status=failed", "?queue=emails", "?status=completed&queue=emails",
                                   "?search=ship", "?search=ORDER-7", "?queue=emails&search=ship"])
def test_the_job_lists_show_what_the_api_lists(ledger: str, redis_namespace: str, query: str) -> None:
    for n in range(60):
        seed_job(status=(JobStatus.FAILED, JobStatus.COMPLETED, JobStatus.PENDING)[n % 3],
                 queue=("default", "emails")[n % 2], actor=("ship", "bill")[n % 4 // 2], args=(f"order-{n}",))
    app = console_app(ledger, redis_namespace)
    browser = logged_in(app)
    api = falcon.testing.TestClient(app, headers=AUTH)
    page = browser.get(CONSOLE + "/jobs" + query)
    assert page.status_code == 200, page.text
    listed = api.simulate_get("/watchtower/jobs" + query).json
    assert ids_on(page.text) == [job["id"] for job in listed["data"]]
    assert listed["data"] or "No jobs match." in page.text
    if listed["has_more"]:
        older = re.search(r'href="([^"]+)" rel="next"', page.text)
        assert older and f"before={listed['next_cursor']}" in older.group(1)
        second = browser.get(older.group(1).replace("&amp;", "&"))
        cursor = api.simulate_get("/watchtower/jobs" + (query + "&" if query else "?") +
                                  f"before={listed['next_cursor']}").json
        assert ids_on(second.text) == [job["id"] for job in cursor["data"]]
    if "status" not in query:
        failed = browser.get(CONSOLE + "/failed" + query)
        expected = api.simulate_get("/watchtower/failed" + query).json["data"]
        assert ids_on(failed.text) == [job["id"] for job in expected]


def test_a_bad_filter_gets_the_apis_error_text_as_a_page(ledger: str, redis_namespace: str) -> None:
    app = console_app(ledger, redis_namespace)
    browser = logged_in(app)
    api = falcon.testing.TestClient(app, headers=AUTH)
    for query in ("?status=lost", "?queue=no%20spaces", "?before=abc", "?search=" + "x" * 201):
        page = browser.get(CONSOLE + "/jobs" + query)
        assert page.status_code == 400, query
        assert page.headers["content-type"].startswith("text/html")
        assert api.simulate_get("/watchtower/jobs" + query).json["description"] in text_of(page.text)
    misspelt = browser.get(CONSOLE + "/jobs?stauts=failed")
    assert misspelt.status_code == 400
    assert "unknown parameter 'stauts': this route takes status, queue, search, before" in text_of(misspelt.text)
    missing = browser.get(CONSOLE + "/jobs/no-such-job")
    assert missing.status_code == 404 and "no job has the id 'no-such-job'" in text_of(missing.text)


def test_no_page_shows_a_redacted_secret(ledger: str, redis_namespace: str) -> None:
    job = seed_job(status=JobStatus.FAILED, actor="charge", args=({"card_token": SECRET},),
                   kwargs={"password": SECRET, "nested": {"api_key": SECRET, "amount": 42}},
                   options={"authorization": SECRET}, exception="RuntimeError: declined")
    browser = logged_in(console_app(ledger, redis_namespace))
    for page in ("", "/jobs", "/failed", f"/jobs/{job.message_id}", "/failed/retry", "/workers",
                 "/jobs?search=charge", "/failed?search=42"):
        answer = browser.get(CONSOLE + page)
        assert answer.status_code == 200, page
        assert SECRET not in answer.text and "hunter2" not in answer.text, page
    assert ids_on(browser.get(f"{CONSOLE}/jobs?search=charge").text) == [job.message_id]
    detail = text_of(browser.get(f"{CONSOLE}/jobs/{job.message_id}").text)
    for shown in ('"password": "[redacted]"', '"api_key": "[redacted]"', '"amount": 42',
                  '"card_token": "[redacted]"', '"authorization": "[redacted]"'):
        assert shown in detail
    # A search by the secret's value finds nothing (the API checks the redacted arguments).
    assert ids_on(browser.get(f"{CONSOLE}/jobs?search={SECRET}").text) == []
    assert ids_on(browser.get(f"{CONSOLE}/failed?search=hunter2").text) == []
    assert "No failed job that has not been retried yet matches" in text_of(
        browser.get(f"{CONSOLE}/failed/retry?search={SECRET}").text)


def test_the_job_page_shows_the_record_its_traceback_and_its_retry_links(ledger: str, redis_namespace: str) -> None:
    retry = seed_job(status=JobStatus.COMPLETED, actor="send_email")
    seed_worker("host-1-7")
    failed = seed_job(status=JobStatus.FAILED, actor="send_email", attempts=3, lost_attempts=1,
                      worker_id="host-1-7", retried_by=retry.message_id,
                      exception='Traceback (most recent call last):\n  File "tasks.py", line 9\nValueError: <b>no</b>')
    Job.update(retried_from=failed.message_id).where(Job.id == retry.id).execute()
    browser = logged_in(console_app(ledger, redis_namespace))
    page = browser.get(f"{CONSOLE}/jobs/{failed.message_id}").text
    text = text_of(page)
    assert "Status failed" in text and "Attempts 3" in text and "Lost attempts 1" in text
    assert 'id="traceback"' in page and "ValueError: &lt;b&gt;no&lt;/b&gt;" in page  # escaped, not markup
    assert f'href="{CONSOLE}/workers?view=all#worker-host-1-7"' in page
    assert f'<dd id="retried-by"><a href="{CONSOLE}/jobs/{retry.message_id}"' in page
    assert 'id="retry"' not in page  # retried already: no second retry offered
    assert 'id="delete"' in page
    again = browser.get(f"{CONSOLE}/jobs/{retry.message_id}").text
    assert f'<dd id="retried-from"><a href="{CONSOLE}/jobs/{failed.message_id}"' in again


def test_the_dashboard_counts_and_refreshes_its_live_part_alone(ledger: str, redis_namespace: str) -> None:
    for status, count in ((JobStatus.COMPLETED, 7), (JobStatus.FAILED, 2), (JobStatus.PENDING, 3)):
        for _ in range(count):
            seed_job(status=status, queue="emails")
    seed_worker("host-1-1")
    seed_worker("host-1-2", status=WorkerStatus.PAUSED)
    browser = logged_in(console_app(ledger, redis_namespace))
    page = browser.get(CONSOLE)
    text = text_of(page.text)
    for expected in ("Completed 7", "Failed 2", "Pending 3", "Processing 0", "Total 12", "Running 1", "Paused 1"):
        assert expected in text, expected
    assert re.search(r'<tr data-queue="emails">.*?<td class="num" data-depth="pending">3</td>', page.text, re.S)
    assert 'data-depth="ready"' not in page.text and 'id="broker-note"' not in page.text  # no broker to ask
    assert 'data-refresh="3"' in page.text
    live = browser.get(CONSOLE, headers={"X-Watchtower-Fragment": "live"})
    assert live.status_code == 200 and not live.text.lstrip().startswith("<!doctype")
    assert "<html" not in live.text and "Completed 7" in text_of(live.text)
    seed_job(status=JobStatus.COMPLETED, queue="emails")
    assert "Completed 8" in text_of(browser.get(CONSOLE, headers={"X-Watchtower-Fragment": "live"}).text)


def test_the_dashboard_shows_the_brokers_queue_depths_when_it_has_a_broker(
    ledger: str, redis_namespace: str, broker: RedisBroker
) -> None:
    import dramatiq

    broker.declare_queue("emails")
    for n in range(2):
        broker.enqueue(dramatiq.Message(queue_name="emails", actor_name="send", args=(n,), kwargs={}, options={}))
    page = logged_in(console_app(ledger, redis_namespace, broker)).get(CONSOLE).text
    row = re.search(r'<tr data-queue="emails">(.*?)</tr>', page, re.S).group(1)
    assert '<td class="num" data-depth="ready">2</td>' in row and '<td class="num" data-depth="dead">0</td>' in row
    # An app that cannot be imported: the page says so and shows the rest.
    broken = logged_in(console_app(ledger, redis_namespace, app="no_such_module_here"))
    answer = broken.get(CONSOLE)
    assert answer.status_code == 200
    assert "No broker counts: the app's broker cannot be loaded: cannot import app module 'no_such_module_here'" \
        in text_of(answer.text)


def test_pages_are_not_cached_framed_or_scripted_from_elsewhere(ledger: str, redis_namespace: str) -> None:
    browser = logged_in(console_app(ledger, redis_namespace))
    for path in (CONSOLE, CONSOLE + "/login", CONSOLE + "/jobs?status=lost"):
        answer = browser.get(path)
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert "<script>" not in answer.text  # no inline script: the policy forbids it
    script = browser.get(re.search(r'<script src="([^"]+)"', browser.get(CONSOLE).text).group(1))
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert Browser(browser.client.app).get(CONSOLE + "/static/console.css").status_code == 200  # open to all
    assert browser.get(CONSOLE + "/static/../app.py").status_code == 404


def test_grafana_links_appear_when_its_address_is_set(ledger: str, redis_namespace: str) -> None:
    seed_job(status=JobStatus.FAILED, queue="emails")
    seed_worker()
    plain = logged_in(console_app(ledger, redis_namespace))
    assert "Grafana" not in plain.get(CONSOLE).text
    linked = logged_in(console_app(ledger, redis_namespace, grafana_url="https://grafana.example/"))
    dashboard = linked.get(CONSOLE).text
    assert 'href="https://grafana.example/d/watchtower-overview"' in dashboard
    assert 'href="https://grafana.example/d/watchtower-queues?var-queue=emails"' in dashboard
    assert 'href="https://grafana.example/d/watchtower-workers?var-supervisor=default"' in linked.get(
        CONSOLE + "/workers").text
    assert 'href="https://grafana.example/d/watchtower-failures?var-queue=emails"' in linked.get(
        CONSOLE + "/failed?queue=emails").text


@pytest.mark.parametrize("value", ["grafana:3000", "ftp://grafana", "http://", ""])
def test_a_grafana_url_that_is_no_address_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="setting 'grafana_url' from environment variable WATCHTOWER_GRAFANA_URL "
                                          "must be the address of a Grafana"):
        load_settings(env={"WATCHTOWER_GRAFANA_URL": value})


# What the actions do and say ----------------------------------------------------------


def test_retry_and_delete_say_what_they_did_or_give_the_apis_error(ledger: str, redis_namespace: str,
                                                                   broker: RedisBroker) -> None:
    failed = seed_job(status=JobStatus.FAILED, queue="default", actor="flaky", args=("t",))
    other = seed_job(status=JobStatus.FAILED, queue="default")
    done = seed_job(status=JobStatus.COMPLETED)
    browser = logged_in(console_app(ledger, redis_namespace, broker))
    here = f"{CONSOLE}/jobs/{failed.message_id}"
    answer = browser.act(f"{CONSOLE}/failed/{failed.message_id}/retry", next=here)
    assert answer.status_code == 200, answer.text
    new_id = Job.get_by_id(failed.id).retried_by
    assert new_id
    assert f"Job {failed.message_id} was sent again to queue default as job {new_id}." in text_of(answer.text)
    assert f'href="{CONSOLE}/jobs/{new_id}"' in answer.text and f'href="{here}"' in answer.text
    assert broker.client.llen(f"{redis_namespace}:default") == 1  # really enqueued

    again = browser.act(f"{CONSOLE}/failed/{failed.message_id}/retry")
    assert again.status_code == 409
    assert f"job {failed.message_id} was already retried as job {new_id}" in text_of(again.text)
    refused = browser.act(f"{CONSOLE}/failed/{done.message_id}/delete")
    assert refused.status_code == 409
    assert f"job {done.message_id} is completed: only failed jobs can be deleted here" in text_of(refused.text)
    deleted = browser.act(f"{CONSOLE}/failed/{other.message_id}/delete", next="https://evil.example/")
    assert deleted.status_code == 200 and f"no longer holds failed job {other.message_id}" in text_of(deleted.text)
    assert "evil.example" not in deleted.text  # the form's next page is never another site
    assert Job.get_or_none(Job.id == other.id) is None
    # The part the script puts in the page.
    part = browser.act(f"{CONSOLE}/failed/{other.message_id}/delete", headers={"X-Watchtower-Fragment": "outcome"})
    assert part.status_code == 404 and part.text.lstrip().startswith('<div class="outcome outcome-error"')


def test_bulk_retry_counts_what_the_filter_selects_asks_and_retries_them(ledger: str, redis_namespace: str,
                                                                         broker: RedisBroker) -> None:
    mine = [seed_job(status=JobStatus.FAILED, queue="emails", actor="send", args=(f"to-{n}",)) for n in range(3)]
    seed_job(status=JobStatus.FAILED, queue="emails", actor="send", args=("to-x",), retried_by="someone")
    others = [seed_job(status=JobStatus.FAILED, queue="reports") for _ in range(2)]
    seed_job(status=JobStatus.COMPLETED, queue="emails")
    browser = logged_in(console_app(ledger, redis_namespace, broker))
    failed_page = browser.get(f"{CONSOLE}/failed?queue=emails").text
    link = re.search(r'href="([^"]+)" class="button" id="bulk-retry"', failed_page).group(1).replace("&amp;", "&")
    assert link == f"{CONSOLE}/failed/retry?queue=emails"
    ask = browser.get(link)
    assert "3 failed jobs not retried yet match on queue emails." in text_of(ask.text)
    assert "Retry 3 jobs" in ask.text
    searched = browser.get(f"{CONSOLE}/failed/retry?queue=emails&search=to-1")
    assert "1 failed job not retried yet matches on queue emails with “to-1”." in text_of(searched.text)

    answer = browser.act(f"{CONSOLE}/failed/retry", queue="emails", search="")
    assert answer.status_code == 200
    assert "3 failed jobs sent again as new jobs." in text_of(answer.text)
    assert all(Job.get_by_id(job.id).retried_by for job in mine)
    assert not any(Job.get_by_id(job.id).retried_by for job in others)
    assert broker.client.llen(f"{redis_namespace}:emails") == 3
    assert "No failed job that has not been retried yet matches" in text_of(browser.get(link).text)
    bad = browser.act(f"{CONSOLE}/failed/retry", queue="no spaces")
    assert bad.status_code == 422 and "'queue' must be a queue name" in text_of(bad.text)


def test_bulk_retry_counts_only_so_far_and_retries_the_oldest_each_press(
    ledger: str, redis_namespace: str, broker: RedisBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watchtower.web import console

    monkeypatch.setattr(console, "BULK_COUNT_UP_TO", 3)
    monkeypatch.setattr(console, "MAX_BULK_RETRY", 2)
    jobs = [seed_job(status=JobStatus.FAILED, queue="emails") for _ in range(5)]
    browser = logged_in(console_app(ledger, redis_namespace, broker))
    ask = text_of(browser.get(f"{CONSOLE}/failed/retry?queue=emails").text)
    assert "More than 3 failed jobs not retried yet match on queue emails." in ask
    assert "One press retries the 2 oldest of them" in ask and "Retry 2 jobs" in ask
    first = text_of(browser.act(f"{CONSOLE}/failed/retry", queue="emails").text)
    assert "2 failed jobs sent again as new jobs. More than 1 more match: press Retry again for them." in first
    assert [bool(Job.get_by_id(job.id).retried_by) for job in jobs] == [True, True, False, False, False]
    second = text_of(browser.act(f"{CONSOLE}/failed/retry", queue="emails").text)
    assert "2 failed jobs sent again as new jobs. 1 more match: press Retry again for them." in second
    last = text_of(browser.act(f"{CONSOLE}/failed/retry", queue="emails").text)
    assert "1 failed job sent again as new job." in last and "more match" not in last
    assert all(Job.get_by_id(job.id).retried_by for job in jobs)


def test_worker_forms_send_the_apis_commands_and_start_requests(ledger: str, redis_namespace: str) -> None:
    seed_worker("host-1-100")
    seed_worker("host-1-101", status=WorkerStatus.STOPPED, stopped_at=now_ms())
    browser = logged_in(console_app(ledger, redis_namespace))
    page = browser.get(CONSOLE + "/workers").text
    assert 'id="worker-host-1-100"' in page and "host-1-101" not in page  # live workers by default
    assert 'id="pause-host-1-100"' in page and 'id="stop-host-1-100"' in page
    assert "Supervisor default on host-1" in text_of(page)
    assert "host-1-101" in browser.get(CONSOLE + "/workers?view=all").text

    sent = browser.act(f"{CONSOLE}/workers/host-1-100/pause")
    assert sent.status_code == 200 and "Worker host-1-100 was told to pause" in text_of(sent.text)
    gone = browser.act(f"{CONSOLE}/workers/host-1-101/resume")
    assert gone.status_code == 409 and "stopped" in text_of(gone.text)
    unknown = browser.act(f"{CONSOLE}/workers/nobody-1/stop")
    assert unknown.status_code == 404 and "nobody-1" in text_of(unknown.text)
    assert browser.act(f"{CONSOLE}/workers/host-1-100/explode").status_code == 404

    bad = browser.act(f"{CONSOLE}/workers/start", queue="default", threads="0", supervisor="default")
    assert bad.status_code == 422 and "'threads' must be from 1 to 256, not 0" in text_of(bad.text)
    bad = browser.act(f"{CONSOLE}/workers/start", queue="default", threads="many", supervisor="default")
    assert bad.status_code == 422 and "'threads' must be a whole number" in text_of(bad.text)
    started = browser.act(f"{CONSOLE}/workers/start", queue="emails", threads="2", supervisor="default")
    assert started.status_code == 200, started.text
    worker_id = re.search(r"asked for worker (\S+) on queue emails", text_of(started.text)).group(1)
    inbox = redis.Redis.from_url(REDIS_URL).lrange(f"{redis_namespace}:{supervisor_inbox_key('default')}", 0, -1)
    requests = [json.loads(entry.decode().split("|", 1)[1]) for entry in inbox]
    assert requests == [{"worker_id": worker_id, "queues": ["emails"], "options": {"threads": 2}}]


def test_the_package_ships_the_templates_and_static_files(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "watchtower", source / "watchtower", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("dramatiq_watchtower-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    web = ROOT / "watchtower" / "web"
    shipped = {f"watchtower/web/{folder}/{path.name}" for folder in ("templates", "static")
               for path in (web / folder).iterdir()}
    assert len(shipped) >= 10 and shipped <= names, shipped - names


# Inside host applications ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["flask", "django-wsgi", "starlette"])
def test_in_a_host_app_its_login_decides_who_sees_the_pages_and_who_acts(
    start_host: Any, queue_name: str, host: str
) -> None:
    import httpx

    failed = seed_job(status=JobStatus.FAILED, queue=queue_name, actor="flaky", args=("t1",))
    served = start_host()
    retry = f"{CONSOLE}/failed/{failed.message_id}/retry"

    def form(http: httpx.Client, path: str, **fields: str) -> httpx.Response:
        page = http.get(f"{CONSOLE}/failed")
        return http.post(path, data={"csrf": csrf_of(page.text), **fields},
                         headers={"Sec-Fetch-Site": "same-origin"})

    stranger = served.visitor()
    refused = stranger.get(CONSOLE, headers={"Accept": BROWSER_ACCEPT})
    assert refused.status_code == 403 and "authorize hook refused" in text_of(refused.text)

    bob = served.visitor()  # may look, not act
    assert log_in(bob, "bob", "bob-pw").status_code == 303
    page = bob.get(f"{CONSOLE}/failed")
    assert page.status_code == 200 and failed.message_id in page.text
    assert f'href="{CONSOLE}/jobs/{failed.message_id}"' in page.text  # links carry the mount point
    assert bob.cookies.get("watchtower_csrf", path=CONSOLE)
    assert form(bob, retry).status_code == 403

    ada = served.visitor()  # an admin
    assert log_in(ada, "ada", "ada-pw").status_code == 303
    assert ada.post(retry, data={"csrf": "forged"}, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 403
    answer = form(ada, retry, next=f"{CONSOLE}/failed")
    assert answer.status_code == 200, answer.text
    assert "was sent again" in text_of(answer.text)
    assert Job.get_by_id(failed.id).retried_by is not None
    assert ada.get("/").text == "hello ada"  # the host's session is untouched


def test_a_supervisor_serves_the_console_beside_its_metrics(
    tmp_path: Path, sqlite_url: str, redis_namespace: str, queue_name: str
) -> None:
    import httpx

    from tests.support.polling import wait_until
    from tests.support.supervisors import app_env, config, metrics_url, rows, running, start_supervisor

    path = config(tmp_path, sqlite_url, redis_namespace, queues=[queue_name], min_processes=1)
    db = store.connect(sqlite_url)
    log = tmp_path / "supervisor.log"
    with running(start_supervisor(path, "default", log, **app_env(redis_namespace, queue_name)), log):
        base = wait_until(lambda: metrics_url(log).removesuffix("/metrics"), 60, message="the supervisor's server")
        worker = wait_until(lambda: rows("default", WorkerStatus.RUNNING), 60, message="the pool's worker")[0]
        # No token configured: the console answers this machine, as the API does.
        with httpx.Client(base_url=base, timeout=30, headers={"Accept": BROWSER_ACCEPT}) as http:
            entry = http.get("/watchtower/")
            assert entry.status_code == 303 and entry.headers["location"] == CONSOLE
            page = http.get(CONSOLE + "/workers")
            assert page.status_code == 200
            assert f'data-worker="{worker.worker_id}" data-status="running"' in page.text
            assert f"Supervisor default on {worker.hostname}" in text_of(page.text)
    db.close()
