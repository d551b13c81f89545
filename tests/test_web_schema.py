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
from watchtower.models import JobStatus, Worker, WorkerStatus, now_ms
from watchtower.web import create_app
from watchtower.web.system import openapi_document

def example(path: str, method: str, name: str) -> str:
    """The example value openapi.json gives for parameter ``name`` of an operation."""
    for parameter in openapi_document()["paths"][path][method]["parameters"]:
        if "$ref" in parameter:
            parameter = openapi_document()["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        if parameter["name"] == name:
            return str(parameter["example"])
    raise KeyError(name)

#: Status codes seen per operation, filled by the test, checked by the fixture.
SEEN: dict[str, set[int]] = {}


@pytest.fixture
def api_schema(tmp_path: Path, redis_namespace: str, caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db = store.connect(database_url)
    # The rows the document's examples name: schemathesis tries them first.
    for path, method in (("/jobs/{job_id}", "get"), ("/failed/{job_id}", "delete"), ("/failed/{job_id}/retry", "post")):
        seed_job(status=JobStatus.FAILED, actor="charge", args=(1,), kwargs={"token": "t"},
                 message_id=example(path, method, "job_id"), exception="Traceback...\nValueError: declined")
    worker_id = example("/workers/{worker_id}/pause", "post", "worker_id")
    Worker.insert(worker_id=worker_id, supervisor="default", status=WorkerStatus.RUNNING, started_at=now_ms(),
                  last_heartbeat=now_ms()).execute()
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
    # Every operation ran, and the success paths were reached, not only refusals.
    operations = {f"{method.upper()} {path}" for path, item in openapi_document()["paths"].items() for method in item}
    # schemathesis leaves out the operation it loaded the document from
    # (GET /openapi.json answered it, through the app, with the token).
    assert set(SEEN) == operations - {"GET /openapi.json"}
    print("status codes per operation:", {label: sorted(codes) for label, codes in sorted(SEEN.items())})
    assert 202 in SEEN["POST /failed/{job_id}/retry"] and 200 in SEEN["DELETE /failed/{job_id}"]
    assert 200 in SEEN["GET /jobs/{job_id}"] and 202 in SEEN["POST /workers/start"]
    assert all(202 in SEEN[f"POST /workers/{{worker_id}}/{command}"] for command in ("stop", "pause", "resume"))
    broker.close()
    db.close()


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(max_examples=60, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_every_operation_keeps_to_the_document(case: Any) -> None:
    response = case.call_and_validate()
    SEEN.setdefault(case.operation.label, set()).add(response.status_code)


def test_the_document_names_every_route_of_the_app() -> None:
    paths = set(openapi_document()["paths"])
    assert paths == {
        "/api/poll", "/jobs", "/jobs/{job_id}", "/failed", "/failed/{job_id}", "/failed/{job_id}/retry",
        "/workers", "/workers/start", "/workers/{worker_id}/stop", "/workers/{worker_id}/pause",
        "/workers/{worker_id}/resume", "/metrics", "/health", "/openapi.json",
    }
