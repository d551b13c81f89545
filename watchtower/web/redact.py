"""Redaction lives in :mod:`watchtower.redact` (the command line shows payloads too); kept here for imports."""

from ..redact import REDACTED, Redactor

__all__ = ["Redactor", "REDACTED"]
