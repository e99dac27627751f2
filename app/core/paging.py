"""Page lengths by bytes: a page of large items holds fewer of them, so that one read's
memory stays bounded whatever the values' size."""
from __future__ import annotations

#: about how many bytes one page may hold
PAGE_BYTES = 4 << 20
#: the first page of a read, before the size of its items is known
FIRST_PAGE = 32


def next_page(count: int, size: int, page: int) -> int:
    """The next page's length: ``page``, or fewer when the last ``count`` items took ``size``
    bytes."""
    return max(1, min(page, PAGE_BYTES * count // size)) if size else page
