"""schemathesis drives every operation of openapi.json against the real WSGI app.

The ledger holds real rows (one failed job under the id the document uses as
its example, so that retry and delete reach their success paths), retries go
to a real Redis broker, and worker commands to the Redis bus.  Every
response must be documented (status, content type, body schema) and none may
be a 5xx; invalid requests schemathesis makes up must be refused with a 4xx.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from conftest import REDIS_URL
from dramatiq.brokers.redis import RedisBroker
from web_support import AUTH, seed_job, web_settings

from watchtower import store
from watchtower.models import JobStatus
from watchtower.web import create_app
from watchtower.web.system import openapi_document

EXAMPLE_JOB = "0b1c5f4e-8c5a-4d6e-9f0a-1b2c3d4e5f60"


@pytest.fixture
def api_schema(tmp_path: Path, redis_namespace: str, caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db = store.connect(database_url)
    seed_job(status=JobStatus.FAILED, actor="charge", args=(1,), kwargs={"token": "t"}, message_id=EXAMPLE_JOB,
             exception="Traceback...\nValueError: declined")
    for status in JobStatus.ALL:
        seed_job(status=status, actor=f"actor_{status}", queue="emails")
    broker = RedisBroker(url=REDIS_URL, namespace=redis_namespace, middleware=[])
    app = create_app(web_settings(database_url, redis_namespace), broker=broker)
    caplog.set_level(logging.ERROR, logger="watchtower")
    loaded = schemathesis.openapi.from_wsgi("/watchtower/openapi.json", app, headers=AUTH)
    loaded.config.update(headers=AUTH)  # every generated request carries the token
    yield loaded
    # No request may have been a bug on the server's side.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    broker.close()
    db.close()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_keeps_to_the_document(case: Any) -> None:
    case.call_and_validate()


def test_the_document_names_every_route_of_the_app() -> None:
    paths = set(openapi_document()["paths"])
    assert paths == {
        "/api/poll", "/jobs", "/jobs/{job_id}", "/failed", "/failed/{job_id}", "/failed/{job_id}/retry",
        "/workers", "/workers/start", "/workers/{worker_id}/stop", "/workers/{worker_id}/pause",
        "/workers/{worker_id}/resume", "/metrics", "/health", "/openapi.json",
    }
