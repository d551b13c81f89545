"""The recorder's spool: events that do not fit in memory wait on local disk for the database.

While the ledger's database is away, a recorder keeps events in memory up to
``recorder.buffer_size``; past half of that, a thread of the recorder moves
the oldest ones, a batch at a time, into this process's spool file, so that
memory stays flat however long the outage lasts.  When the database is back,
the recorder writes the spool's batches in the order they were spooled.
Only past ``recorder.spool_bytes`` (one file's size) are events dropped.

Where::

    <recorder.spool_dir>/<database key>/<host>-<pid>-<random>.spool

The default ``recorder.spool_dir`` is ``watchtower-spool-<uid>`` in the
system's temporary directory (``$TMPDIR``, else ``/tmp``).  The database key
names the ledger (its kind and a hash of its host, port and name, or of the
SQLite file's absolute path; ``database.txt`` beside the files says which),
so that events are only ever replayed into the database they were meant for.
The directories are this user's own (mode 0700); a directory owned by
someone else is refused, since anyone who can write there can write the
ledger.

A file per process, each locked (``flock``) by its process for as long as
it runs.  A file whose lock can be taken belongs to a process that has died
(the kernel releases the lock however it died, even by SIGKILL): the first
recorder on the host that takes the lock replays it into the database and
deletes it; its lock keeps every other process away meanwhile, so no file
ever has two replayers.

The format::

    header  b"WTSPOOL1"  then the offset of the first batch not yet written (8 bytes, little-endian)
    batch   length (4 bytes) + CRC-32 of the payload (4 bytes) + payload

A payload is one batch as JSON: ``{"fields": [...], "jobs": [[...], ...],
"workers": [[id, {...}], ...]}``, the job events as lists of the values of
the fields named in ``fields`` (so that a later release that adds a field
still reads an older spool).  A batch is appended with one ``write`` and then
``fsync``: after a crash, at most the last batch is torn, and a batch whose
length or CRC does not match is where the file ends.  The header's offset
moves after each batch the database took (``fdatasync`` at most every
second): a process that dies while replaying leaves the rest to the next
one.  If it dies between a batch's commit and the offset's move (or the
machine crashes within a second of it), that batch is written twice: the job
rows are upserts ordered by the events' own progress (the same row either
way), while that batch's counts in the per-minute rollups are added twice.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import SpoolError
from .events import JobEvent, Kind, WorkerEvent

__all__ = [
    "SpoolFile", "Batch", "default_spool_root", "spool_directory", "ensure_directory", "orphans",
    "describe", "SUFFIX",
]

logger = logging.getLogger(__name__)

MAGIC = b"WTSPOOL1"
_HEADER = struct.Struct("<8sQ")  # magic, offset of the first batch not yet written
_FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload
HEADER_SIZE = _HEADER.size
#: The file name's ending; anything else in the directory is left alone.
SUFFIX = ".spool"
#: Seconds between two fdatasync of a header being moved by a replay.
SYNC_INTERVAL = 1.0
_FIELDS = tuple(field.name for field in dataclasses.fields(JobEvent))


def default_spool_root() -> Path:
    """``watchtower-spool-<uid>`` in the system's temporary directory."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"watchtower-spool-{uid}"


def database_key(url: str) -> tuple[str, str]:
    """The name of the spool directory of the ledger at ``url``, and a description for people.

    Only what names the database counts (kind, host, port and name; a
    SQLite file's absolute path), not the user, password or options.
    """
    from .store import check_database_url, redact_url  # the store owns URLs

    spec = check_database_url(url)
    if spec.kind == "sqlite":
        identity = f"sqlite:{os.path.abspath(spec.database)}"
    else:
        identity = f"{spec.kind}:{spec.params.get('host')}:{spec.params.get('port', '')}/{spec.database}"
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    return f"{spec.kind}-{digest}", f"{identity}\n{redact_url(url)}\n"


def spool_directory(root: str | os.PathLike[str] | None, url: str) -> Path:
    """The spool directory of the ledger at ``url`` under ``root`` (None: the default root).

    Nothing is created here: the recorder creates it (see :func:`ensure_directory`)
    the first time it spools.
    """
    key, _ = database_key(url)
    return Path(root if root is not None else default_spool_root()) / key


def ensure_directory(directory: Path, description: str | None = None) -> None:
    """Create ``directory`` (and its parent) for this user only, or check that it is this user's own.

    Raises SpoolError saying what is wrong.
    """
    for path in (directory.parent, directory):
        try:
            path.mkdir(mode=0o700, exist_ok=True)
        except OSError as error:
            raise SpoolError(f"cannot create the spool directory {str(path)!r}: {error.strerror or error}") from None
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode):
        raise SpoolError(f"the spool directory {str(directory)!r} is not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise SpoolError(
            f"the spool directory {str(directory)!r} belongs to uid {info.st_uid}, not to this process's "
            f"uid {os.getuid()}: set recorder.spool_dir to a directory of this user's own"
        )
    if info.st_mode & 0o022:
        raise SpoolError(
            f"the spool directory {str(directory)!r} is writable by others (mode {stat.S_IMODE(info.st_mode):o}): "
            "chmod it to 700, or set recorder.spool_dir to a directory of this user's own"
        )
    if description is not None:
        about = directory / "database.txt"
        if not about.exists():
            try:
                about.write_text(description, encoding="utf-8")
            except OSError:
                pass  # only for people reading the directory


@dataclass
class Batch:
    """One batch read back from a spool file."""

    jobs: list[JobEvent]
    workers: list[WorkerEvent]
    end: int  # the offset just past it: where the next batch starts


def encode_batch(jobs: Sequence[JobEvent], workers: Sequence[WorkerEvent] = ()) -> bytes:
    """One batch as a frame: length, CRC-32, JSON payload."""
    rows = [[getattr(event, name) for name in _FIELDS] for event in jobs]
    kind = _FIELDS.index("kind")
    for row in rows:
        row[kind] = row[kind].value
    payload = json.dumps(
        {"fields": _FIELDS, "jobs": rows, "workers": [[w.worker_id, w.fields] for w in workers]},
        separators=(",", ":"), default=str,
    ).encode("utf-8")
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


_KINDS = {kind.value: kind for kind in Kind}


def decode_payload(payload: bytes) -> tuple[list[JobEvent], list[WorkerEvent]]:
    data = json.loads(payload)
    names = data["fields"]
    if tuple(names) == _FIELDS:  # written by this release: the values in the constructor's order
        jobs = [JobEvent(*row) for row in data["jobs"]]
    else:
        known = set(_FIELDS)
        jobs = [JobEvent(**{name: value for name, value in zip(names, row, strict=False) if name in known})
                for row in data["jobs"]]
    kinds = _KINDS
    for event in jobs:
        event.kind = kinds[event.kind]  # type: ignore[index]
    workers = [WorkerEvent(str(worker_id), dict(fields)) for worker_id, fields in data["workers"]]
    return jobs, workers


class SpoolFile:
    """One spool file, opened and locked (``flock``) by this process.

    Appends (the recorder's spooling thread) and reads (its flusher) may
    come from two threads; one lock keeps the size and the header straight.
    """

    def __init__(self, path: Path, fd: int, *, max_bytes: int, size: int, replayed: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._fd: int | None = fd
        self._size = size
        self._replayed = replayed
        self._lock = threading.Lock()
        self._synced = 0.0
        #: Bytes at the end that did not form a whole batch (a crash mid-write).
        self.torn = 0

    # Opening --------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, *, max_bytes: int, hostname: str = "") -> SpoolFile:
        """A new, empty, locked file of this process's own in ``directory`` (which must exist)."""
        host = "".join(c if c.isalnum() or c in "-_." else "_" for c in hostname)[:64] or "host"
        path = directory / f"{host}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, _HEADER.pack(MAGIC, HEADER_SIZE))
            os.fsync(fd)
            _fsync_directory(directory)  # the file's name survives a crash too
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(path, fd, max_bytes=max_bytes, size=HEADER_SIZE, replayed=HEADER_SIZE)

    @classmethod
    def adopt(cls, path: Path) -> SpoolFile | None:
        """Open and lock the file of a process that is gone; None if it is in use or gone itself.

        Raises SpoolError for a file that is not a spool (left alone, renamed
        ``.unreadable`` so that it is not tried again).
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    return None  # its process is alive, or another one replays it
                raise
            # Replayed and deleted by another process between our open and our lock?
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                return None
            size = os.fstat(fd).st_size
            header = os.pread(fd, HEADER_SIZE, 0)
            if len(header) < HEADER_SIZE:
                if size == len(header):  # died while creating it: nothing was spooled
                    return cls(path, fd, max_bytes=0, size=size, replayed=size)
                raise SpoolError(f"{path} has a short header")
            magic, replayed = _HEADER.unpack(header)
            if magic != MAGIC or not HEADER_SIZE <= replayed <= size:
                raise SpoolError(f"{path} is not a watchtower spool file (or of another version)")
        except SpoolError:
            os.close(fd)
            try:
                os.rename(path, path.with_suffix(".unreadable"))
            except OSError:
                pass
            raise
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, max_bytes=0, size=size, replayed=replayed)

    # Writing --------------------------------------------------------------

    def append(self, batches: Sequence[tuple[Sequence[JobEvent], Sequence[WorkerEvent]]]) -> int:
        """Append as many of ``batches`` (job events, worker events) as fit, in one write and one fsync.

        Returns how many were appended (the first ones; 0 when the first
        would pass ``max_bytes``).  Raises OSError when the disk refuses
        (full, read-only); the file is then as it was before.
        """
        frames = [encode_batch(jobs, workers) for jobs, workers in batches]
        with self._lock:
            fd = self._require()
            room = self.max_bytes - self._size
            count = 0
            while count < len(frames) and len(frames[count]) <= room:
                room -= len(frames[count])
                count += 1
            if not count:
                return 0
            data = b"".join(frames[:count])
            try:
                written = os.pwrite(fd, data, self._size)
                if written != len(data):
                    raise OSError(errno.ENOSPC, "short write")
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, self._size)
                except OSError:
                    pass
                raise
            self._size += len(data)
        return count

    # Reading --------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    def backlog_bytes(self) -> int:
        """Bytes of batches not yet written to the database."""
        return self._size - self._replayed

    def next_batch(self, max_events: int = 1000) -> Batch | None:
        """The first batches not yet written to the database, as one of up to ``max_events`` job events.

        Batches spooled a few events at a time (a quiet process, while the
        database is away) come back together, so that a replay writes
        transactions of a useful size.  None when nothing is left (or the
        rest is torn: see :attr:`torn`).
        """
        with self._lock:
            fd = self._require()
            offset, size = self._replayed, self._size
        jobs: list[JobEvent] = []
        workers: list[WorkerEvent] = []
        end = offset
        while offset < size:
            head = os.pread(fd, _FRAME.size, offset)
            length, crc = _FRAME.unpack(head) if len(head) == _FRAME.size else (-1, 0)
            payload = os.pread(fd, length, offset + _FRAME.size) if length >= 0 else b""
            if length < 0 or len(payload) < length or zlib.crc32(payload) != crc:
                self.torn = size - offset
                break
            following = offset + _FRAME.size + length
            try:
                more_jobs, more_workers = decode_payload(payload)
            except (ValueError, KeyError, TypeError) as error:
                logger.error("watchtower spool %s: skipping a batch that cannot be read (%s)", self.path, error)
                offset = end = following
                continue
            if jobs and len(jobs) + len(more_jobs) > max_events:
                break
            jobs.extend(more_jobs)
            workers.extend(more_workers)
            offset = end = following
            if len(jobs) >= max_events:
                break
        if not jobs and not workers:
            if end > self._replayed:
                self.mark_written(end)  # only unreadable batches were passed
            return None
        return Batch(jobs, workers, end)

    def mark_written(self, end: int) -> None:
        """The batches before ``end`` are in the database: move the header's offset (and empty a finished file).

        The header is rewritten every time (a process that dies keeps it:
        it is in the kernel's cache) and forced to the disk at most every
        SYNC_INTERVAL seconds (only a crash of the machine itself can lose
        the last moves, and then batches are written again).
        """
        with self._lock:
            fd = self._require()
            if end >= self._size:
                # Everything is written: start the file again (under the lock,
                # so no append slips in between).
                os.ftruncate(fd, HEADER_SIZE)
                self._size = end = HEADER_SIZE
            os.pwrite(fd, _HEADER.pack(MAGIC, end), 0)
            now = time.monotonic()
            if end == HEADER_SIZE or now - self._synced >= SYNC_INTERVAL:
                os.fdatasync(fd)
                self._synced = now
            self._replayed = end

    # Closing --------------------------------------------------------------

    def close(self, *, delete: bool = False) -> None:
        """Release the file (its lock goes with it); ``delete`` removes it first (only when written out)."""
        with self._lock:
            if self._fd is None:
                return
            if delete:
                self.path.unlink(missing_ok=True)  # while locked: no one else can be replaying it
            os.close(self._fd)
            self._fd = None

    def forget(self) -> None:
        """In a forked child: drop the parent's descriptor (the lock stays the parent's)."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _require(self) -> int:
        if self._fd is None:
            raise ValueError(f"spool file {self.path} is closed")
        return self._fd


def orphans(directory: Path, *, skip: Path | None = None) -> Iterator[Path]:
    """The spool files in ``directory`` other than ``skip``, oldest first (not yet known to be unlocked)."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    found = []
    for entry in entries:
        if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
            path = Path(entry.path)
            if skip is None or path != skip:
                try:
                    found.append((entry.stat(follow_symlinks=False).st_mtime, path))
                except FileNotFoundError:
                    continue
    yield from (path for _, path in sorted(found))


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe(directory: Path) -> list[dict[str, Any]]:
    """What waits in ``directory``: per spool file its path, the bytes not yet written, and whether its process runs."""
    result = []
    for path in orphans(directory):
        try:
            size = path.stat().st_size
            with path.open("rb") as handle:
                header = handle.read(HEADER_SIZE)
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                    in_use = False
                except OSError:
                    in_use = True
            replayed = _HEADER.unpack(header)[1] if len(header) == HEADER_SIZE else size
        except (OSError, struct.error):
            continue
        result.append({"path": str(path), "bytes": max(0, size - replayed), "in_use": in_use})
    return result
