"""Request bodies and query values, checked: every mistake is an ``Invalid`` naming the field.

Python's JSON parser also takes ``NaN`` and ``Infinity`` (and turns ``1e999`` into infinity),
which other clients could not read back, and fails on deep nesting with ``RecursionError``;
all are the caller's mistake.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from ..core.errors import Invalid, TooLarge
from ..core.scopes import candidates, text
from ..settings import Settings
from ..wire import MAX_ID, dump

DIGITS = re.compile("[0-9]{1,19}")
#: the longest time to live: about a hundred years
MAX_TTL_SECONDS = 3.2e9


def raw_body() -> bytes:
    """The request body. Werkzeug hands over only the first ``MAX_CONTENT_LENGTH`` bytes of a
    chunked body (no Content-Length), so one byte more is looked for to refuse it as too large."""
    raw = request.get_data(cache=True)
    limit = request.max_content_length
    if (request.content_length is None and limit is not None and len(raw) >= limit
            and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()
    return raw


class NotStandard(ValueError):
    """A number Python's parser takes but standard JSON has not."""


def _not_json(name: str) -> None:
    raise NotStandard(f"{name} is not JSON")


def _finite(number_text: str) -> float:
    number = float(number_text)
    if math.isinf(number):
        raise NotStandard(f"{number_text} is too large")
    return number


def body() -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        value = json.loads(raw_body(), parse_constant=_not_json, parse_float=_finite)
    except RecursionError:
        raise Invalid("invalid_json", "The request body is nested too deeply.") from None
    except NotStandard:
        raise Invalid("invalid_json", "The request body holds a number JSON cannot: NaN, "
                                      "Infinity, or one too large for a double.") from None
    except ValueError:
        raise Invalid("invalid_json", "The request body must be a JSON object.") from None
    if not isinstance(value, dict):
        raise Invalid("invalid_body", "The request body must be a JSON object.")
    return value


def key(fields: dict[str, Any], settings: Settings, name: str = "key") -> str:
    value = fields.get(name)
    if value is None:
        raise Invalid(f"missing_{name}", f"'{name}' is required.")
    value = text(value, name)
    if not value:
        raise Invalid(f"invalid_{name}", f"'{name}' must be a non-empty string.")
    if len(value) > settings.max_key_length:
        raise Invalid(f"{name}_too_long",
                      f"'{name}' is longer than {settings.max_key_length} characters.")
    return value


def data(fields: dict[str, Any], settings: Settings) -> str:
    """``data`` as stored JSON text: any JSON value, null included, but not a missing one."""
    if "data" not in fields:
        raise Invalid("missing_data", "'data' is required (null is a valid value).")
    stored = dump(fields["data"])
    if len(stored) > settings.max_value_bytes:
        raise TooLarge("value_too_large",
                       f"'data' is larger than {settings.max_value_bytes} bytes as JSON.")
    return stored


def write_scope(fields: dict[str, Any]) -> tuple[str, str]:
    """Where a write goes: the explicit scope, else the most specific scope header (global
    is always one)."""
    return candidates(fields.get("scope"), fields.get("scope_id"), request.headers)[0]


def if_version(fields: dict[str, Any]) -> int | None:
    """``if_version``: a record version as a decimal string (or number), ``"0"`` for "absent"."""
    value = fields.get("if_version")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise Invalid("invalid_if_version", "'if_version' must be a version string such as "
                                            "\"42\", or \"0\" for a key that must not exist.")
    return int_value(str(value).strip(), "invalid_if_version", "if_version", 0, MAX_ID)


def ttl_seconds(fields: dict[str, Any]) -> float | None:
    value = fields.get("ttl_seconds")
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value <= MAX_TTL_SECONDS):
        raise Invalid("invalid_ttl_seconds", f"'ttl_seconds' must be a number of seconds "
                                             f"greater than 0 and at most {MAX_TTL_SECONDS:.0f}.")
    return float(value)


def int_value(value: str | None, error: str, name: str, low: int, high: int) -> int:
    """Decimal digits only (Python's ``int`` would also take ``+1_0`` and other scripts')."""
    number = int(value) if value is not None and DIGITS.fullmatch(value) else None
    # (at most 19 digits: no id is longer, and Python refuses very long ones)
    if number is None or not low <= number <= high:
        raise Invalid(error, f"'{name}' must be a whole number from {low} to {high}; "
                             f"got {value!r}.")
    return number


def optional_int(name: str, low: int, high: int, default: int | None = None) -> int | None:
    """A whole-number query value; blank or absent is ``default``."""
    value = request.args.get(name)
    if value is None or not value.strip():
        return default
    return int_value(value.strip(), f"invalid_{name}", name, low, high)


def flag(name: str) -> bool:
    """A ``0``/``1`` query value; absent is ``0``."""
    value = request.args.get(name, "0").strip()
    if value not in ("0", "1", ""):
        raise Invalid(f"invalid_{name}", f"'{name}' must be 0 or 1; got {value!r}.")
    return value == "1"


def since(value: str | None) -> float | None:
    """RFC 3339 / ISO 8601; a time without an offset is UTC."""
    if value is None or not value.strip():
        return None
    stamp = value.strip()
    if stamp[-1:] in "zZ":
        stamp = stamp[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        raise Invalid("invalid_since", f"'since' must be an RFC 3339 / ISO 8601 time; "
                                       f"got {value!r}.") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
