"""apps.sup_app with a big import: 200 MB (``WT_TEST_BALLAST_MB``) allocated and kept at import.

As an app that loads a model or a large table when it is imported: each of
the supervisor's workers is over a memory limit of 128 MB before it runs
any job.
"""

from __future__ import annotations

import os

from apps.sup_app import *  # noqa: F403  (the broker and the actors)

BALLAST = b"\x01" * (int(os.environ.get("WT_TEST_BALLAST_MB", "200")) * 1024 * 1024)  # written: resident
