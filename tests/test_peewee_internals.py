"""Contract tests: the peewee internals Watchtower relies on still hold.

watchtower.store chooses the driver itself: it overrides ``_connect``
(Peewee's hook for opening a connection, which reads ``connect_params``)
and passes ``prefer_psycopg3`` (Peewee 4's switch between its psycopg 2
and 3 adapters).

The ledger's MySQL write runs ``cursor().executemany`` itself, inside
``peewee.__exception_wrapper__`` (undocumented), so that a driver's error
arrives as peewee's own class (the recorder and the deadlock retry catch
those), with the driver's exception reachable for
``watchtower.ledger.is_deadlock`` (its first argument or its context).
"""

from __future__ import annotations

from pathlib import Path

import peewee
import pymysql
import pytest

from tests.support.servers import fresh_database
from watchtower.store import connect


def test_exception_wrapper_turns_a_driver_error_into_peewees_keeping_the_original(tmp_path: Path) -> None:
    with fresh_database("mysql", tmp_path) as url:
        db = connect(url)
        db.execute_sql("CREATE TABLE probe (id INT PRIMARY KEY)")
        with pytest.raises(peewee.IntegrityError) as caught:
            with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
                db.cursor().executemany("INSERT INTO probe (id) VALUES (%s)", [(1,), (1,)])
        error = caught.value
        # Where is_deadlock looks for the driver's exception and its code.
        original = error.args[0] if error.args and isinstance(error.args[0], BaseException) else error.__context__
        assert isinstance(original, pymysql.err.IntegrityError)
        assert original.args[0] == 1062  # ER_DUP_ENTRY
        db.close()


def test_connect_hook_and_the_psycopg_switch(tmp_path: Path) -> None:
    with fresh_database("postgresql", tmp_path) as url:
        name = url.rsplit("/", 1)[1]
        opened: list[object] = []

        class Probe(peewee.PostgresqlDatabase):
            def _connect(self) -> object:
                assert self.connect_params["host"] == "127.0.0.1"
                conn = super()._connect()
                opened.append(conn)
                return conn

        for prefer, module in ((True, "psycopg"), (False, "psycopg2")):
            db = Probe(name, host="127.0.0.1", user="postgres", prefer_psycopg3=prefer)
            db.execute_sql("SELECT 1")
            assert type(opened[-1]).__module__.split(".")[0] == module
            db.close()
        assert len(opened) == 2
