"""Pick the store from ``MEMORY_DB_URL``."""
from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .base import LogFilter, Record, SqlStore, Store, StoreUnavailable

__all__ = ["LogFilter", "Record", "SqlStore", "Store", "StoreUnavailable", "open_store"]


def open_store(url: str) -> Store:
    """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``postgresql://…``."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from .sqlite import SqliteStore
        path = unquote(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"MEMORY_DB_URL={url!r}: expected sqlite:///path/to/file.db")
        return SqliteStore(path)
    if scheme in ("postgres", "postgresql"):
        from .postgres import PostgresStore
        return PostgresStore(url)
    raise ValueError(f"MEMORY_DB_URL={url!r}: unsupported scheme {scheme!r} (sqlite or postgresql)")
