"""The traceback text the ledger keeps for a failed attempt, written cheaply.

Every failed attempt's traceback is recorded, and it is written on the
worker thread that ran the job, under the process's GIL: in a storm of
failing jobs that is where the workers' time goes.  So it is written once:

- Dramatiq's Retries middleware formats the traceback of every failure it
  handles (``traceback.format_exc(limit=30)`` into
  ``message.options["traceback"]``), whether it retries the message or gives
  up on it.  The middleware keeps that text when it belongs to the attempt
  and :func:`within` says that no traceback of the exception's chain is
  deeper than Retries' 30 frames (its text would lack the frames nearest the
  failure): then it is the text that ``traceback.format_exception`` writes.
- Otherwise (an exception the actor ``throws``, no Retries, a deeper
  stack) :func:`format_exception` writes it: the layout of
  ``traceback.format_exception`` without the ``^^^^`` lines that mark the
  failing expression (Python parses each line's source to place them: half
  of the standard formatter's time), with the source lines from
  :mod:`linecache` without a ``stat`` of every file of the stack on every
  failure (each stat hands the GIL to another thread and waits to get it
  back; the process runs the code it loaded, so a line read once stays
  right), and written from the end backwards only as far as the kept part
  reaches.

Either way the text is capped to its last :data:`EXCEPTION_LIMIT` characters,
where the failure is.
"""

from __future__ import annotations

import linecache
import traceback
from types import TracebackType

__all__ = ["EXCEPTION_LIMIT", "RETRIES_FRAMES", "cap", "format_exception", "within"]

#: Tracebacks are kept up to this many characters (their last part).
EXCEPTION_LIMIT = 16_384

#: How many frames of each traceback Dramatiq's Retries writes (``format_exc(limit=30)``).
RETRIES_FRAMES = 30

_TRUNCATED = "...(truncated)...\n"
_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"
_HEADER = "Traceback (most recent call last):\n"
_REPEATS_SHOWN = 3  # the standard formatter's cutoff for a line repeated by recursion


def cap(text: str | None) -> str | None:
    """``text`` cut to its last EXCEPTION_LIMIT characters, marked as cut (None stays None)."""
    return None if text is None else _capped(text)


def _chain(exception: BaseException) -> list[tuple[str | None, BaseException]]:
    """The exceptions ``traceback.format_exception`` writes, newest first.

    Each comes with the line written above its traceback that links it to
    the older exception written before it (None for the oldest).
    """
    chain: list[tuple[str | None, BaseException]] = []
    seen = {id(exception)}
    current: BaseException | None = exception
    while current is not None:
        older: BaseException | None = None
        link: str | None = None
        if current.__cause__ is not None:
            older, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            older, link = current.__context__, _CONTEXT
        if older is not None and id(older) in seen:  # a cycle: the standard formatter stops there too
            older, link = None, None
        chain.append((link, current))
        if older is not None:
            seen.add(id(older))
        current = older
    return chain


def within(exception: BaseException, frames: int = RETRIES_FRAMES) -> bool:
    """Whether every traceback in ``exception``'s chain has at most ``frames`` frames.

    Exception groups count as too deep: their members' tracebacks are not
    walked here (the standard formatter nests them).
    """
    seen: set[int] = set()
    current: BaseException | None = exception
    while current is not None and id(current) not in seen:
        if isinstance(current, BaseExceptionGroup):
            return False
        tb: TracebackType | None = current.__traceback__
        for _ in range(frames):
            if tb is None:
                break
            tb = tb.tb_next
        if tb is not None:
            return False
        seen.add(id(current))
        # The next older exception the standard formatter writes (see _chain).
        current = current.__cause__ if current.__cause__ is not None else (
            None if current.__suppress_context__ else current.__context__)
    return True


def _exception_line(exception: BaseException) -> str:
    """The last line(s) of a traceback: ``module.Type: message`` and the exception's notes."""
    kind = type(exception)
    if isinstance(exception, SyntaxError):
        # Its own layout (the offending line and a caret): the standard one.
        return "".join(traceback.format_exception_only(kind, exception))
    name = kind.__qualname__
    module = kind.__module__
    if module not in ("__main__", "builtins"):
        name = f"{module if isinstance(module, str) else '<unknown>'}.{name}"
    try:
        message = str(exception)
    except Exception:
        message = "<exception str() failed>"
    text = f"{name}: {message}\n" if message else f"{name}\n"
    notes = getattr(exception, "__notes__", None)
    if isinstance(notes, (list, tuple)):
        for note in notes:
            try:
                note = str(note)
            except Exception:
                note = "<note str() failed>"
            text += "".join(line + "\n" for line in note.split("\n"))
    elif notes is not None:
        try:
            text += f"{notes!r}\n"
        except Exception:
            text += "<__notes__ repr() failed>\n"
    return text


class _Run:
    """Consecutive frames of a traceback at the same line of the same function (recursion), and how many."""

    __slots__ = ("count", "filename", "globals", "lineno", "name")

    def __init__(self, filename: str, lineno: int | None, name: str, module_globals: dict[str, object]) -> None:
        self.filename, self.lineno, self.name, self.globals = filename, lineno, name, module_globals
        self.count = 1


def _runs(tb: TracebackType | None) -> list[_Run]:
    """The frames of ``tb``, outermost first, a line repeated by recursion as one run."""
    runs: list[_Run] = []
    while tb is not None:
        code = tb.tb_frame.f_code
        filename, lineno, name = code.co_filename, tb.tb_lineno, code.co_name
        last = runs[-1] if runs else None
        if last is not None and last.lineno == lineno and last.name == name and last.filename == filename:
            last.count += 1
        else:
            runs.append(_Run(filename, lineno, name, tb.tb_frame.f_globals))
        tb = tb.tb_next
    return runs


def format_exception(exception: BaseException) -> str:
    """The traceback of ``exception`` and its chain, capped to its last EXCEPTION_LIMIT characters.

    The layout of ``traceback.format_exception`` (the oldest exception of
    the chain first; a line repeated by recursion shown three times, then
    counted) without the lines of carets.  Written from the end backwards,
    and only as far back as the kept part reaches.  Exception groups are
    written by the standard formatter.
    """
    chain = _chain(exception)
    if any(isinstance(member, BaseExceptionGroup) for _, member in chain):
        return _capped("".join(traceback.format_exception(exception)))
    parts: list[str] = []  # the text's pieces, last first
    size = 0
    for link, member in chain:
        parts.append(_exception_line(member))
        size += len(parts[-1])
        runs = _runs(member.__traceback__)
        for run in reversed(runs):
            if size > EXCEPTION_LIMIT:
                break
            if run.count > _REPEATS_SHOWN:
                more = run.count - _REPEATS_SHOWN
                parts.append(f"  [Previous line repeated {more} more time{'s' if more > 1 else ''}]\n")
                size += len(parts[-1])
            line = linecache.getline(run.filename, run.lineno, run.globals).strip() if run.lineno else ""
            frame = f'  File "{run.filename}", line {run.lineno}, in {run.name}\n' + (f"    {line}\n" if line else "")
            shown = min(run.count, _REPEATS_SHOWN)
            parts.extend([frame] * shown)
            size += len(frame) * shown
        if runs:
            parts.append(_HEADER)
        if link is not None:
            parts.append(link)
        size += len(_HEADER) + len(link or "")
        if size > EXCEPTION_LIMIT:
            break
    parts.reverse()
    return _capped("".join(parts))


def _capped(text: str) -> str:
    if len(text) > EXCEPTION_LIMIT:
        return _TRUNCATED + text[-EXCEPTION_LIMIT:]
    return text
