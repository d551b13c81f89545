"""When the database, the bus or the broker is down: 503 with a message, nothing half-done,
no error logged as a bug, and service again once it is back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from dramatiq.brokers.redis import RedisBroker

from tests.support.servers import POSTGRES_ADMIN
from tests.support.web_api import client, seed_job, table_fingerprint, web_settings
from watchtower import store
from watchtower.models import Job
from watchtower.statuses import JobStatus
from watchtower.store import check_database_url
from watchtower.web import create_app

NOWHERE_DB = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"
NOWHERE_REDIS = "redis://127.0.0.1:1/0"


def no_bugs_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_an_unreachable_database_is_503_and_health_says_so(
    redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    api = client(create_app(web_settings(NOWHERE_DB, redis_namespace)))
    for path in ("/watchtower/jobs", "/watchtower/api/poll", "/watchtower/jobs/abc", "/watchtower/workers"):
        answer = api.simulate_get(path)
        assert answer.status_code == 503, path
        assert "ledger database" in answer.json["description"]
        assert answer.headers["retry-after"] == "5"
        assert "127.0.0.1" in answer.json["description"]
    health = api.simulate_get("/watchtower/health")
    assert health.status_code == 503
    assert health.json["status"] == "unavailable"
    assert health.json["database"]["ok"] is False and health.json["bus"] == {"ok": True}
    assert no_bugs_logged(caplog) == []


def test_an_unreachable_bus_shows_in_health(sqlite_url: str, redis_namespace: str) -> None:
    store.connect(sqlite_url)
    api = client(create_app(web_settings(sqlite_url, redis_namespace, redis_url=NOWHERE_REDIS)))
    health = api.simulate_get("/watchtower/health")
    assert health.status_code == 503
    assert health.json["database"] == {"ok": True}
    assert health.json["bus"]["ok"] is False and "127.0.0.1:1" in health.json["bus"]["error"]


@pytest.fixture
def postgres_api(postgres_url: str, redis_namespace: str) -> Iterator[tuple[Any, str]]:
    db = store.connect(postgres_url)
    yield client(create_app(web_settings(postgres_url, redis_namespace))), postgres_url
    db.close()


def test_connections_cut_by_the_server_are_503_once_then_served_again(
    postgres_api: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    api, url = postgres_api
    job = seed_job()
    assert api.simulate_get(f"/watchtower/jobs/{job.message_id}").status_code == 200

    # The server ends every connection to this test's database (as a restart would).
    admin = check_database_url(POSTGRES_ADMIN)
    name = check_database_url(url).database
    with psycopg.connect(dbname=admin.database, autocommit=True, **admin.params) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    cut = api.simulate_get(f"/watchtower/jobs/{job.message_id}")
    assert cut.status_code == 503 and "ledger database is unavailable" in cut.json["description"]
    assert api.simulate_get(f"/watchtower/jobs/{job.message_id}").status_code == 200  # reconnected
    assert no_bugs_logged(caplog) == []


def test_a_retry_the_broker_cannot_take_changes_nothing(
    sqlite_url: str, redis_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    store.connect(sqlite_url)
    failed = seed_job(status=JobStatus.FAILED, args=(1,))
    before = table_fingerprint()
    down = RedisBroker(url=NOWHERE_REDIS, namespace=redis_namespace, middleware=[])
    api = client(create_app(web_settings(sqlite_url, redis_namespace), broker=down))
    answer = api.simulate_post(f"/watchtower/failed/{failed.message_id}/retry")
    assert answer.status_code == 503
    assert answer.json["description"].startswith(f"the broker did not take the retry of job {failed.message_id}")
    assert table_fingerprint() == before  # no new row, no link
    assert Job.get(Job.id == failed.id).retried_by is None
    assert no_bugs_logged(caplog) == []


def test_a_retry_without_an_app_to_load_is_503_saying_what_to_set(
    sqlite_url: str, redis_namespace: str
) -> None:
    store.connect(sqlite_url)
    failed = seed_job(status=JobStatus.FAILED)
    api = client(create_app(web_settings(sqlite_url, redis_namespace)))
    answer = api.simulate_post(f"/watchtower/failed/{failed.message_id}/retry")
    assert answer.status_code == 503
    assert "set 'app'" in answer.json["description"]
    missing = api.simulate_post("/watchtower/failed/0b1c5f4e-8c5a-4d6e-9f0a-1b2c3d4e5f60/retry")
    assert missing.status_code == 404  # an unknown id is known to be unknown without the app
    assert Job.get(Job.id == failed.id).retried_by is None
