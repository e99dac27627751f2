"""What can go wrong, in the service's own words; the web layer maps each kind to a status.

Every error carries a stable snake_case ``code`` and a sentence for people, so any transport
can say what happened without knowing where it was raised.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import Record


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Invalid(ServiceError):
    """The request is wrong in a way the caller can fix (a bad field, a malformed glob)."""


class TooLarge(Invalid):
    """A value or body over a configured limit."""


class NotFound(ServiceError):
    """Nothing under that key."""


class VersionConflict(ServiceError):
    """A conditional write found another version; nothing was written."""

    def __init__(self, current: "Record | None") -> None:
        super().__init__("version_conflict", "The record's version is not the one given in "
                                             "'if_version'; nothing was written.")
        self.current = current


class Unavailable(ServiceError):
    """A state the caller can wait out: the store is down, or the server is full."""

    def __init__(self, code: str, message: str, retry_after: int = 1) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after
