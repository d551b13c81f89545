"""Telling an OOM kill from a kill -9: the memory cgroup's oom_kill count, as the kernel writes it."""

from __future__ import annotations

import signal
from pathlib import Path

from watchtower.oom import OomCounter, cgroup_oom_files
from watchtower.supervisor import _describe_exit

V1_EVENTS = "oom_kill_disable 0\nunder_oom 0\noom_kill {}\n"
V2_EVENTS = "low 0\nhigh 0\nmax 4\noom 2\noom_kill {}\noom_group_kill 0\n"


def test_the_files_come_from_this_process_cgroup_v1_and_v2(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("9:name=systemd:/\n4:memory:/pods/worker-7\n1:cpu:/\n")
    assert list(cgroup_oom_files(str(proc), tmp_path)) == [
        tmp_path / "memory" / "pods" / "worker-7" / "memory.oom_control", tmp_path / "memory" / "memory.oom_control",
    ]
    proc.write_text("0::/system.slice/app.service\n")
    assert next(iter(cgroup_oom_files(str(proc), tmp_path))) == (
        tmp_path / "system.slice" / "app.service" / "memory.events"
    )
    assert list(cgroup_oom_files(str(tmp_path / "missing"), tmp_path)) == []


def test_the_count_rising_between_two_looks_is_an_oom_kill(tmp_path: Path) -> None:
    for text in (V1_EVENTS, V2_EVENTS):
        events = tmp_path / "memory.events"
        events.write_text(text.format(5))
        counter = OomCounter(events)
        assert counter.rose() is False  # nothing since it was made
        events.write_text(text.format(6))
        assert counter.rose() is True
        assert counter.rose() is False  # once
    assert OomCounter(tmp_path / "nothing-here").rose() is False


def test_a_sigkill_is_named_out_of_memory_only_when_the_count_rose() -> None:
    assert _describe_exit(-signal.SIGKILL, None) == "killed by SIGKILL"
    assert _describe_exit(-signal.SIGKILL, None, oom=True) == (
        "killed by SIGKILL: out of memory (the kernel's OOM killer)"
    )


def test_this_machine_has_a_count_to_read_when_its_cgroup_shows_one() -> None:
    readable = [path for path in cgroup_oom_files() if path.is_file() and "oom_kill" in path.read_text()]
    counter = OomCounter()
    assert (counter.path is not None) == bool(readable)
    assert counter.rose() is False
