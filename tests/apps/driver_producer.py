"""Sends ``COUNT`` ``add`` and ``COUNT // 10`` ``refuse`` messages of :mod:`apps.driver_app`,
then one ``report_driver``.

    python -m apps.driver_producer COUNT
"""

from __future__ import annotations

import sys

from apps.driver_app import add, refuse, report_driver

count = int(sys.argv[1])
for number in range(count):
    add.send(number, 1)
for number in range(count // 10):
    refuse.send(number)
report_driver.send()
print(f"sent {count + count // 10 + 1}")
