"""The API mounted in a Flask, Django, Starlette or FastAPI app behind the host's own login.

Each host (tests/apps/host_*.py) is a real app with a login route that sets
its own session cookie, and mounts the API by the README's recipe, run as
written: whoever logs in may look, only admins may act.  Each is served by a
real server on a free port (werkzeug for WSGI, uvicorn for ASGI) in a
process of its own, on a SQLite ledger that the test fills.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.support.host_apps import HOSTS, Host, log_in
from tests.support.web_api import TOKEN, seed_job, web_settings
from watchtower import store
from watchtower.models import Job
from watchtower.statuses import JobStatus


def retried_by(job: Job) -> str | None:
    return Job.get(Job.id == job.id).retried_by


@pytest.mark.parametrize("host", list(HOSTS))
def test_the_host_login_decides_who_looks_and_who_acts(start_host: Callable[..., Host], queue_name: str,
                                                       host: str) -> None:
    failed = seed_job(status=JobStatus.FAILED, queue=queue_name, actor="flaky", args=("t1",))
    done = seed_job(status=JobStatus.COMPLETED, queue=queue_name, actor="work")
    retry = f"/watchtower/failed/{failed.message_id}/retry"

    served = start_host()
    stranger = served.visitor()
    assert stranger.get("/").text == "hello stranger"
    refused = stranger.get("/watchtower/jobs")
    assert refused.status_code == 403, refused.text
    assert refused.json()["description"] == "the host application's authorize hook refused this request"
    assert stranger.post(retry).status_code == 403
    assert stranger.get("/watchtower/health").status_code == 200  # open as ever
    assert log_in(stranger, "bob", "wrong").status_code == 401
    assert stranger.get("/watchtower/jobs").status_code == 403

    bob = served.visitor()
    assert log_in(bob, "bob", "bob-pw").status_code == 303
    assert bob.get("/").text == "hello bob"
    jobs = bob.get("/watchtower/jobs")
    assert jobs.status_code == 200, jobs.text
    assert [job["id"] for job in jobs.json()["data"]] == [done.message_id, failed.message_id]
    assert bob.get(f"/watchtower/jobs/{failed.message_id}").json()["status"] == "failed"
    refused = bob.post(retry)
    assert refused.status_code == 403 and "authorize hook refused" in refused.json()["description"]
    assert bob.delete(f"/watchtower/failed/{failed.message_id}").status_code == 403
    assert retried_by(failed) is None

    ada = served.visitor()
    assert log_in(ada, "ada", "ada-pw").status_code == 303
    # Another site's page making ada's browser post, with her cookie: refused.
    for header in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                   {"Origin": "http://elsewhere.example"}):
        refused = ada.post(retry, headers=header)
        assert refused.status_code == 403, (header, refused.text)
        assert "from another site is refused" in refused.json()["description"]
    # A look is harmless.
    assert ada.get("/watchtower/jobs", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200
    assert retried_by(failed) is None
    # Her own page's request (the browser says so).
    answer = ada.post(retry, headers={"Sec-Fetch-Site": "same-origin"})
    assert answer.status_code == 202, answer.text
    assert answer.json()["retried_from"] == failed.message_id
    assert retried_by(failed) == answer.json()["id"]
    assert ada.post(retry).status_code == 409  # retried already: the API's own answer, past the hook
    # A request body reaches the API whole; an Origin of this site without Sec-Fetch-Site (an older browser).
    started = ada.post("/watchtower/workers/start", json={"queue": queue_name, "threads": 3},
                       headers={"Origin": str(ada.base_url).rstrip("/")})
    assert started.status_code == 202, started.text
    assert started.json()["queue"] == queue_name and started.json()["options"]["threads"] == 3
    assert bob.post("/watchtower/workers/start", json={"queue": queue_name}).status_code == 403

    assert ada.get("/").text == "hello ada"  # the host's session survived the API's answers
    ada.cookies.clear()
    assert ada.get("/watchtower/jobs").status_code == 403


@pytest.mark.parametrize("host", ["flask", "django-asgi", "fastapi"])
def test_with_a_token_the_host_login_is_a_second_way_in(start_host: Callable[..., Host], queue_name: str,
                                                         host: str) -> None:
    failed = seed_job(status=JobStatus.FAILED, queue=queue_name, actor="flaky", args=("t2",))
    served = start_host(WATCHTOWER_API_TOKEN=TOKEN)
    script = served.visitor()

    refused = script.get("/watchtower/jobs")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert script.get("/watchtower/jobs", headers=bearer).json()["data"][0]["id"] == failed.message_id
    # A script's token is no session: no cross-site check applies to it.
    answer = script.post(f"/watchtower/failed/{failed.message_id}/retry",
                         headers={**bearer, "Origin": "http://elsewhere.example"})
    assert answer.status_code == 202, answer.text

    bob = served.visitor()
    assert log_in(bob, "bob", "bob-pw").status_code == 303
    assert bob.get("/watchtower/jobs").status_code == 200
    # The hook refuses bob a delete, and he has no token.
    assert bob.delete(f"/watchtower/failed/{failed.message_id}").status_code == 401
    assert Job.get_or_none(Job.id == failed.id) is not None


@pytest.mark.parametrize("host", ["flask", "starlette"])
def test_without_a_token_or_hook_a_mount_answers_direct_loopback_clients_only(
    sqlite_url: str, redis_namespace: str, host: str
) -> None:
    # The helpers hand the API the host's client address and headers: the
    # token-less rule holds as with any other mount.
    from watchtower.web import create_app
    from watchtower.web.hosts import mount_flask, starlette_app

    db = store.connect(sqlite_url)
    api = create_app(web_settings(sqlite_url, redis_namespace, **{"http.token": None}))

    def status(client_address: str, headers: dict[str, str]) -> int:
        if host == "flask":
            import flask

            flask_app = flask.Flask("host")
            mount_flask(flask_app, "/watchtower", api)
            answer = flask_app.test_client().get("/watchtower/jobs", headers=headers,
                                                 environ_base={"REMOTE_ADDR": client_address})
            return answer.status_code
        import asyncio

        from starlette.applications import Starlette

        starlette = Starlette()
        starlette.mount("/watchtower", starlette_app(api))

        async def get() -> int:
            transport = httpx.ASGITransport(app=starlette, client=(client_address, 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
                return (await http.get("/watchtower/jobs", headers=headers)).status_code

        return asyncio.run(get())

    assert status("127.0.0.1", {}) == 200
    assert status("::1", {}) == 200
    assert status("203.0.113.9", {}) == 403
    assert status("127.0.0.1", {"X-Forwarded-For": "203.0.113.9"}) == 403
    db.close()
