"""Cloud Logging (v2): read entries with a filter, newest first, one page at a time."""

from __future__ import annotations

# Cloud Logging answers at most 1000 entries per page.
MAX_PAGE = 1000


def list_entries(clients, log_filter: str, *, limit: int, newest_first: bool = True) -> list[dict]:
    """Up to `limit` entries of the project matching `log_filter`."""
    entries: list[dict] = []
    token = None
    api = clients.api("logging").entries()
    while len(entries) < limit:
        body = {
            "resourceNames": [f"projects/{clients.project}"],
            "filter": log_filter,
            "orderBy": "timestamp desc" if newest_first else "timestamp asc",
            "pageSize": min(MAX_PAGE, limit - len(entries)),
        }
        if token:
            body["pageToken"] = token
        resp = clients.execute(api.list(body=body), "reading log entries")
        entries += resp.get("entries") or []
        token = resp.get("nextPageToken")
        if not token:
            break
    return entries[:limit]
