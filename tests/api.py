"""Plain HTTP calls the stream tests share."""
from __future__ import annotations

import requests


def put(base_url: str, key: str, data: object, session: requests.Session | None = None,
        **extra: object) -> dict:
    """``POST /memory/set`` and return the record, failing on anything but 200."""
    response = (session or requests).post(base_url + "/api/v1/memory/set",
                                          json={"key": key, "data": data, **extra}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def history_ids(base_url: str, **params: object) -> list[int]:
    """Every id in the log that passes ``params``, paging forward with ``after_id``."""
    ids: list[int] = []
    while True:
        response = requests.get(base_url + "/api/v1/memory/events/history",
                                params={**params, "limit": 1000, "after_id": ids[-1] if ids else 0},
                                timeout=10)
        assert response.status_code == 200, response.text
        page = [int(event["id"]) for event in response.json()]
        ids.extend(page)
        if len(page) < 1000:
            return ids
