"""Makes the modules named in ``WT_TEST_BLOCK`` (comma-separated) unimportable.

A child process started with this directory on its ``PYTHONPATH`` behaves as
if those packages were not installed: ``import psycopg2`` raises
ModuleNotFoundError, as in a virtualenv that has only the other driver.
Python imports ``sitecustomize`` at start-up, before any user code.
"""

import os
import sys

for _name in filter(None, os.environ.get("WT_TEST_BLOCK", "").split(",")):
    sys.modules[_name] = None  # type: ignore[assignment]  # "import of X halted; None in sys.modules"
