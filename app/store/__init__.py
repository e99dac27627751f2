"""The store: memory records, the ordered event log and vectors, chosen by ``MEMORY_DB_URL``."""
from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .interface import Listing, Store, StoredVector, StoreUnavailable

__all__ = ["Listing", "Store", "StoredVector", "StoreUnavailable", "open_store", "parse_url"]


def parse_url(url: str) -> tuple[str, str]:
    """``("sqlite", path)`` or ``("postgresql", url)``; a ``ValueError`` saying what is wrong."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = unquote(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"MEMORY_DB_URL={url!r}: expected sqlite:///path/to/file.db "
                             "or sqlite:///:memory:")
        return "sqlite", path
    if scheme in ("postgres", "postgresql"):
        return "postgresql", url
    raise ValueError(f"MEMORY_DB_URL={url!r}: unsupported scheme {scheme!r} (sqlite or postgresql)")


def open_store(url: str) -> Store:
    """``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``
    (this process only) or ``postgresql://…``."""
    kind, target = parse_url(url)
    if kind == "sqlite":
        from .sqlite import SqliteStore
        return SqliteStore(target)
    from .postgres import PostgresStore
    return PostgresStore(target)
