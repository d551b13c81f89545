"""What the tests share beside their fixtures.

tests/conftest.py holds only fixtures and hooks; test modules import their
helpers from here, never from conftest or from each other.

- ``servers``: the machine's servers, names of a test's own, fresh databases.
- ``polling``: waiting with a deadline (and watching that something stays so), never a fixed sleep.
- ``checkout``: this checkout's root and the environment of a child process.
- ``lab``: real worker processes against a ledger and a Redis bus, cleaned up.
- ``supervisors``: settings files and ``watchtower supervise`` processes.
- ``brokers``: Dramatiq brokers of each kind, RabbitMQ queues deleted after.
- ``private_servers``: a PostgreSQL and a Redis server of a test's own, to stop and start.
- ``tcp_proxy``: a loopback proxy whose connections a test cuts (an outage without stopping a server).
- ``recording``: job events, an in-process worker with the recording middleware, what reached the ledger.
- ``exposition``: a Prometheus exposition's samples, promtool's verdict on it, a scrape over HTTP.
- ``prometheus_pack``: the pack under prometheus/ read as data, and promtool run in it.
- ``web_api``: the control API's settings, seeded jobs, a test client, a served API.
- ``console_client``: a cookie-keeping client of the console, forms read from pages.
- ``host_apps``: the host apps of tests/apps/host_*.py served, visited, logged in to.
- ``cli_project``: a user's project directory and the installed command line.
- ``grafana``: what Grafana does to a dashboard's queries.
- ``ledger_fill``: filling a ledger fast, for pruning tests and benchmarks.
- ``import_blockers/``: a ``sitecustomize`` that makes named packages unimportable in a child.

The benchmarks import some of these too (a private PostgreSQL, the ledger fill).
"""
