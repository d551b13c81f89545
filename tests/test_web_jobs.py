"""The job routes through the real WSGI app, on SQLite, PostgreSQL and MariaDB.

Listing, filtering, paging, searching (actor and arguments, bounded),
the whole record with redaction, deleting failed jobs, and what bad or
hostile input gets: a clean 4xx (or, for search text, a literal search),
nothing logged as an error, the table untouched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.web_api import client, seed_job, seed_many, table_fingerprint, web_settings
from watchtower import store, views
from watchtower.models import Job
from watchtower.statuses import JobStatus
from watchtower.web import create_app
from watchtower.web import jobs as jobs_module


@pytest.fixture
def api(database_url: str, redis_namespace: str) -> Iterator[Any]:
    db = store.connect(database_url)
    app = create_app(web_settings(database_url, redis_namespace))
    yield client(app)
    db.close()


def ids(page: dict[str, Any]) -> list[str]:
    return [job["id"] for job in page["data"]]


def test_jobs_are_listed_newest_first_with_filters_and_pages(api: Any) -> None:
    old = seed_many(3, queue="emails", status=JobStatus.COMPLETED)
    failed = seed_many(2, queue="emails", status=JobStatus.FAILED, exception="boom")
    other = seed_many(2, queue="reports", status=JobStatus.FAILED)

    everything = api.simulate_get("/watchtower/jobs").json
    assert ids(everything) == [job.message_id for job in reversed(old + failed + other)]
    assert everything["has_more"] is False

    emails_failed = api.simulate_get("/watchtower/jobs", params={"status": "failed", "queue": "emails"}).json
    assert ids(emails_failed) == [job.message_id for job in reversed(failed)]
    assert all(job["status"] == "failed" and job["queue"] == "emails" for job in emails_failed["data"])

    first = api.simulate_get("/watchtower/jobs", params={"per_page": 3}).json
    second = api.simulate_get("/watchtower/jobs", params={"per_page": 3, "page": 2}).json
    third = api.simulate_get("/watchtower/jobs", params={"per_page": 3, "page": 3}).json
    assert (first["has_more"], second["has_more"], third["has_more"]) == (True, True, False)
    assert ids(first) + ids(second) + ids(third) == ids(everything)

    failed_list = api.simulate_get("/watchtower/failed", params={"queue": "reports"}).json
    assert ids(failed_list) == [job.message_id for job in reversed(other)]


def test_a_cursor_pages_through_a_list_past_the_last_numbered_page(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "MAX_PAGE", 2)  # numbered pages stop early; cursors do not
    emails = seed_many(7, queue="emails", status=JobStatus.FAILED)
    seed_many(3, queue="reports", status=JobStatus.FAILED)
    assert api.simulate_get("/watchtower/failed", params={"per_page": 2, "page": 3}).status_code == 400

    seen: list[str] = []
    pages = 0
    answer = api.simulate_get("/watchtower/failed", params={"per_page": 2, "queue": "emails"}).json
    while True:
        pages += 1
        seen += ids(answer)
        if not answer["has_more"]:
            assert answer["next_cursor"] is None
            break
        assert answer["next_cursor"].isdigit()
        # A job recorded meanwhile goes on top and does not shift the pages below.
        seed_job(queue="emails", status=JobStatus.FAILED)
        answer = api.simulate_get(
            "/watchtower/failed", params={"per_page": 2, "queue": "emails", "before": answer["next_cursor"]}
        ).json
    assert pages == 4
    assert seen == [job.message_id for job in reversed(emails)]


def test_page_counts_from_the_cursor_and_search_looks_below_it(api: Any) -> None:
    matches = seed_many(6, actor="cursor_actor")
    seed_many(2, actor="other")
    first = api.simulate_get("/watchtower/jobs", params={"search": "cursor_actor", "per_page": 2}).json
    assert ids(first) == [job.message_id for job in reversed(matches)][:2]
    cursor = first["next_cursor"]
    after = api.simulate_get(
        "/watchtower/jobs", params={"search": "cursor_actor", "per_page": 2, "before": cursor}
    ).json
    skipped = api.simulate_get(
        "/watchtower/jobs", params={"search": "cursor_actor", "per_page": 2, "before": cursor, "page": 2}
    ).json
    assert ids(after) == [job.message_id for job in reversed(matches)][2:4]
    assert ids(skipped) == [job.message_id for job in reversed(matches)][4:6]
    assert (after["has_more"], skipped["has_more"], skipped["next_cursor"]) == (True, False, None)
    # Below the oldest row there is nothing.
    below_all = api.simulate_get("/watchtower/jobs", params={"before": "1"}).json
    assert below_all["data"] == [] and below_all["has_more"] is False


def test_a_list_entry_is_a_summary_and_the_detail_is_the_whole_record(api: Any) -> None:
    job = seed_job(
        actor="charge", status=JobStatus.FAILED, args=(42,), kwargs={"amount": 9.5},
        options={"max_retries": 0}, exception="Traceback (most recent call last):\nValueError: card declined",
        broker_message_id="redis-id-1",
    )
    entry = api.simulate_get("/watchtower/jobs").json["data"][0]
    assert entry["id"] == job.message_id and entry["actor"] == "charge" and entry["status"] == "failed"
    assert "payload" not in entry and "exception" not in entry
    assert entry["duration"] == pytest.approx(0.005)

    detail = api.simulate_get(f"/watchtower/jobs/{job.message_id}").json
    assert detail["payload"]["args"] == [42]
    assert detail["payload"]["kwargs"] == {"amount": 9.5}
    assert detail["payload"]["options"] == {"max_retries": 0}
    assert detail["payload"]["message_id"] == job.message_id
    assert detail["exception"].endswith("ValueError: card declined")
    assert detail["broker_message_id"] == "redis-id-1"
    assert detail["payload_readable"] is True
    assert detail["queued_at"].endswith("Z")


def test_secret_looking_fields_are_redacted_in_the_response_but_kept_in_the_ledger(api: Any) -> None:
    job = seed_job(
        actor="login",
        args=({"user": "ada", "password": "hunter2"},),
        kwargs={"api_token": "tok-123", "nested": {"Client_Secret": "xyz", "keep": "visible"}, "note": "hi"},
    )
    detail = api.simulate_get(f"/watchtower/jobs/{job.message_id}").json
    payload = detail["payload"]
    assert payload["args"] == [{"user": "ada", "password": "[redacted]"}]
    assert payload["kwargs"] == {
        "api_token": "[redacted]", "nested": {"Client_Secret": "[redacted]", "keep": "visible"}, "note": "hi",
    }
    body = json.dumps(detail)
    assert "hunter2" not in body and "tok-123" not in body and "xyz" not in body

    stored = Job.get(Job.message_id == job.message_id).get_payload()
    assert stored["args"][0]["password"] == "hunter2"
    assert stored["kwargs"]["api_token"] == "tok-123"


def test_search_matches_the_actor_and_the_arguments_case_insensitively(api: Any) -> None:
    invoice = seed_job(actor="send_invoice", args=("ACME Corp",))
    report = seed_job(actor="build_report", kwargs={"customer": "acme corp", "year": 2024})
    seed_job(actor="cleanup", args=("nothing to see",))
    quoted = seed_job(actor="greet", args=('O"Brien 100%_done', "café"))

    def found(text: str) -> list[str]:
        return ids(api.simulate_get("/watchtower/jobs", params={"search": text}).json)

    assert found("invoice") == [invoice.message_id]
    assert found("acme") == [report.message_id, invoice.message_id]
    assert found("ACME CORP") == [report.message_id, invoice.message_id]
    assert found("INVOICE") == [invoice.message_id]
    assert found("2024") == [report.message_id]
    # The user's quotes and wildcards are literal text, not JSON or LIKE syntax.
    assert found('O"Brien') == [quoted.message_id]
    assert found("100%_done") == [quoted.message_id]
    assert found("%") == [quoted.message_id]
    assert found("café") == [quoted.message_id]
    assert found("zzz-no-such-text") == []
    # Text no column can hold is still just text to look for.
    assert found("nul\x00byte") == []
    encoded_surrogate = api.simulate_get("/watchtower/jobs", query_string="search=%ED%A0%80%00%FF")
    assert encoded_surrogate.status_code == 200 and encoded_surrogate.json["data"] == []
    answer = api.simulate_get("/watchtower/jobs", params={"search": "acme"}).json
    assert answer["search_complete"] is True and answer["search_window"] == jobs_module.SEARCH_WINDOW


def test_search_does_not_find_a_job_by_a_redacted_value(api: Any) -> None:
    seed_job(actor="login", kwargs={"password": "hunter2-unique"})
    visible = seed_job(actor="login", kwargs={"comment": "hunter2-unique"})
    found = api.simulate_get("/watchtower/jobs", params={"search": "hunter2-unique"}).json
    assert ids(found) == [visible.message_id]


def test_search_looks_through_a_bounded_window_and_says_so(api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "SEARCH_WINDOW", 5)  # the search the API and the CLI share
    oldest = seed_job(actor="needle_job")
    seed_many(5, actor="hay")
    newest = seed_job(actor="needle_job")
    answer = api.simulate_get("/watchtower/jobs", params={"search": "needle"}).json
    assert ids(answer) == [newest.message_id]  # the oldest is outside the 5 newest rows
    assert answer["search_complete"] is False
    narrowed = api.simulate_get(
        "/watchtower/jobs", params={"search": "needle", "queue": "default", "status": "completed"}
    ).json
    assert oldest.message_id not in ids(narrowed)


def test_search_pages_through_matches(api: Any) -> None:
    matches = seed_many(5, actor="paged_actor")
    seed_many(3, actor="other")
    first = api.simulate_get("/watchtower/jobs", params={"search": "paged", "per_page": 2}).json
    second = api.simulate_get("/watchtower/jobs", params={"search": "paged", "per_page": 2, "page": 2}).json
    third = api.simulate_get("/watchtower/jobs", params={"search": "paged", "per_page": 2, "page": 3}).json
    assert ids(first) + ids(second) + ids(third) == [job.message_id for job in reversed(matches)]
    assert (first["has_more"], second["has_more"], third["has_more"]) == (True, True, False)


def test_delete_removes_a_failed_jobs_record_only(api: Any) -> None:
    failed = seed_job(status=JobStatus.FAILED)
    completed = seed_job(status=JobStatus.COMPLETED)
    gone = api.simulate_delete(f"/watchtower/failed/{failed.message_id}")
    assert gone.status_code == 200 and gone.json == {"id": failed.message_id, "deleted": True}
    assert Job.get_or_none(Job.message_id == failed.message_id) is None
    assert api.simulate_delete(f"/watchtower/failed/{failed.message_id}").status_code == 404

    refused = api.simulate_delete(f"/watchtower/failed/{completed.message_id}")
    assert refused.status_code == 409
    assert "completed" in refused.json["description"]
    assert Job.get_or_none(Job.message_id == completed.message_id) is not None


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("/watchtower/jobs", {"status": "exploded"}, 400, "'status' must be one of"),
        ("/watchtower/jobs", {"page": "0"}, 400, "'page' must be from 1"),
        ("/watchtower/jobs", {"page": "two"}, 400, "'page' must be a whole number"),
        ("/watchtower/jobs", {"page": "9" * 400}, 400, "'page' must be a whole number"),
        ("/watchtower/jobs", {"per_page": "101"}, 400, "'per_page' must be from 1 to 100"),
        ("/watchtower/jobs", {"before": "0"}, 400, "'before' must be the next_cursor"),
        ("/watchtower/jobs", {"before": "12ab"}, 400, "'before' must be the next_cursor"),
        ("/watchtower/failed", {"before": "9" * 19}, 400, "'before' must be the next_cursor"),
        ("/watchtower/jobs", {"queue": "no spaces"}, 400, "'queue' must be a queue name"),
        ("/watchtower/jobs", {"search": "x" * 201}, 400, "at most 200"),
        ("/watchtower/jobs/not a valid id!", {}, 400, "is not a job id"),
        ("/watchtower/jobs/" + "a" * 65, {}, 400, "is not a job id"),
        ("/watchtower/jobs/0b1c5f4e-8c5a-4d6e-9f0a-1b2c3d4e5f60", {}, 404, "no job has the id"),
        ("/watchtower/nowhere", {}, 404, ""),
    ],
)
def test_bad_input_gets_a_json_4xx_that_says_what_is_wrong(
    api: Any, path: str, params: dict[str, str], status: int, says: str
) -> None:
    answer = api.simulate_get(path, params=params)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert set(answer.json) == {"title", "description"}
    assert says in answer.json["description"]


INJECTIONS = [
    "' OR '1'='1",
    "'; DROP TABLE watchtower_jobs; --",
    "\" OR 1=1 --",
    "1; DELETE FROM watchtower_jobs",
    "%' UNION SELECT payload FROM watchtower_jobs --",
    "\\'; SELECT pg_sleep(5); --",
    "')) OR 1=1 /*",
]


@pytest.mark.parametrize("attack", INJECTIONS)
def test_sql_injection_is_data_never_sql(api: Any, attack: str, caplog: pytest.LogCaptureFixture) -> None:
    seed_many(3, status=JobStatus.FAILED)
    holder = seed_job(actor="notes", args=(f"remember {attack}",))
    before = table_fingerprint()
    caplog.set_level(logging.WARNING)

    # In search it is text to find: it finds only the row that contains it.
    searched = api.simulate_get("/watchtower/jobs", params={"search": attack})
    assert searched.status_code == 200
    assert ids(searched.json) == [holder.message_id]
    # As a queue or an id it is malformed: a clean 400.
    assert api.simulate_get("/watchtower/jobs", params={"queue": attack}).status_code == 400
    assert api.simulate_get("/watchtower/jobs", params={"status": attack}).status_code == 400
    for path in (f"/watchtower/jobs/{attack}", f"/watchtower/failed/{attack}/retry"):
        answer = api.simulate_request("POST" if path.endswith("retry") else "GET", path)
        assert answer.status_code in (400, 404), (path, answer.status_code)
    assert api.simulate_delete(f"/watchtower/failed/{attack}").status_code in (400, 404)
    assert api.simulate_post(f"/watchtower/workers/{attack}/stop").status_code in (400, 404)

    assert table_fingerprint() == before
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("size", [10_000, 1_000_000])
def test_oversized_inputs_are_refused_cleanly(api: Any, size: int, caplog: pytest.LogCaptureFixture) -> None:
    seed_many(2)
    before = table_fingerprint()
    caplog.set_level(logging.WARNING)
    big = "a" * size
    assert api.simulate_get("/watchtower/jobs", params={"search": big}).status_code == 400
    assert api.simulate_get("/watchtower/jobs", params={"queue": big}).status_code == 400
    assert api.simulate_get("/watchtower/jobs", params={"page": "1" * size}).status_code == 400
    assert api.simulate_get(f"/watchtower/jobs/{big}").status_code == 400
    assert api.simulate_post(f"/watchtower/failed/{big}/retry").status_code == 400
    assert api.simulate_delete(f"/watchtower/failed/{big}").status_code == 400
    assert api.simulate_post(f"/watchtower/workers/{big}/pause").status_code == 400
    too_big = api.simulate_post("/watchtower/workers/start", json={"queue": "default", "pad": big})
    assert too_big.status_code in (413, 422)
    assert table_fingerprint() == before
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_a_job_whose_message_another_encoder_wrote_still_shows(api: Any) -> None:
    job = seed_job(payload="base64:bm90IGEgbWVzc2FnZQ==")
    detail = api.simulate_get(f"/watchtower/jobs/{job.message_id}")
    assert detail.status_code == 200
    assert detail.json["payload"] is None and detail.json["payload_readable"] is False
