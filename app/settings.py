"""Settings, read once from the environment; a mapping given to ``create_app`` wins."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .store import parse_url


@dataclass(frozen=True)
class Settings:
    db_url: str = "sqlite:///data/memory.db"
    heartbeat_seconds: float = 15.0
    subscriber_queue: int = 1000
    subscriber_bytes: int = 4 << 20
    retention_hours: float = 48.0
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    stream_max_seconds: float = 3600.0
    poll_seconds: float | None = None
    max_body_bytes: int = 1_048_576
    max_key_length: int = 512
    max_value_bytes: int = 262_144
    max_patterns: int = 32
    max_pattern_length: int = 256
    max_streams: int = 10_000
    vector_metric: str = "cosine"

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None) -> "Settings":
        """Build settings from ``MEMORY_*`` variables, then ``overrides`` (same names).

        A value that does not parse stops the start with a message naming the variable, rather
        than letting a typo silently fall back to a default.
        """
        source: dict[str, Any] = {k: v for k, v in os.environ.items() if k.startswith("MEMORY_")}
        source.update(overrides or {})
        values: dict[str, Any] = {}
        for name, (field, parse) in _FIELDS.items():
            raw = source.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[field] = parse(raw)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}={raw!r} is not valid: {exc}") from None
        settings = cls(**values)
        parse_url(settings.db_url)  # a bad URL stops the start, not the first request
        return settings


def _positive(kind: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        value = kind(raw)
        if not 0 < value < float("inf"):
            raise ValueError("must be a finite number greater than zero")
        return value
    return parse


def _one_of(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return parse


def _origins(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return tuple(item.strip().rstrip("/").lower() for item in items if item.strip())


_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "MEMORY_DB_URL": ("db_url", str),
    "MEMORY_HEARTBEAT_SECONDS": ("heartbeat_seconds", _positive(float)),
    "MEMORY_SUBSCRIBER_QUEUE": ("subscriber_queue", _positive(int)),
    "MEMORY_SUBSCRIBER_BYTES": ("subscriber_bytes", _positive(int)),
    "MEMORY_RETENTION_HOURS": ("retention_hours", _positive(float)),
    "MEMORY_API_KEY": ("api_key", str),
    "MEMORY_CORS_ORIGINS": ("cors_origins", _origins),
    "MEMORY_STREAM_MAX_SECONDS": ("stream_max_seconds", _positive(float)),
    "MEMORY_POLL_SECONDS": ("poll_seconds", _positive(float)),
    "MEMORY_MAX_BODY_BYTES": ("max_body_bytes", _positive(int)),
    "MEMORY_MAX_KEY_LENGTH": ("max_key_length", _positive(int)),
    "MEMORY_MAX_VALUE_BYTES": ("max_value_bytes", _positive(int)),
    "MEMORY_MAX_PATTERNS": ("max_patterns", _positive(int)),
    "MEMORY_MAX_PATTERN_LENGTH": ("max_pattern_length", _positive(int)),
    "MEMORY_MAX_STREAMS": ("max_streams", _positive(int)),
    "MEMORY_VECTOR_METRIC": ("vector_metric", _one_of("cosine", "dot", "l2")),
}
