"""A small Python client for the intently HTTP API (standard library only).

    from serving.client import Client
    c = Client("http://127.0.0.1:8000", api_key="...")          # api_key: default $INTENTLY_API_KEY
    c.search("lunch bag", k=5, user_id="c12347")["results"]
    c.recommend("c12347", k=5)
    c.events([{"user_id": "c12347", "event_type": "view", "item_id": "22423"}])
    c.put_item("SKU-1", {"title": "Red mug", "price": 4.5})
    c.similar("22423")
    c.forget("c12347")

Every call retries 429 (rate limit) and 503 (overload, replica being replaced) and connection
errors, waiting what Retry-After says (at most `max_wait_s` in all), so a replica restart does not
surface as an error. Writes are safe to retry: events carry an event_id (made here when absent),
so the server de-duplicates a retried batch; item upserts and forgets are idempotent. Any other
error raises ApiError with the server's status and message (which names the field at fault).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

RETRY_STATUS = (429, 502, 503, 504)


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body
        detail = body.get("detail", body) if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {detail}")


class Client:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout_s: float = 10.0, max_wait_s: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("INTENTLY_API_KEY") or None
        self.timeout_s, self.max_wait_s = timeout_s, max_wait_s

    # --- the API ----------------------------------------------------------------------------
    def search(self, query: str, k: int = 10, user_id: str | None = None, **options: Any) -> dict:
        """options: filters={category, price_min, price_max, in_stock}, diversity, exclude_purchased, reasons."""
        return self.call("POST", "/v1/search", {"query": query, "k": k, **({"user_id": user_id} if user_id else {}), **options})

    def recommend(self, user_id: str, k: int = 10, context_item_id: str | None = None, **options: Any) -> dict:
        """options: as search's (reasons=False: the same results without reasons, cheaper)."""
        body = {"user_id": user_id, "k": k, **options}
        if context_item_id:
            body["context_item_id"] = context_item_id
        return self.call("POST", "/v1/recommend", body)

    def similar(self, item_id: str, k: int = 10) -> dict:
        return self.call("GET", f"/v1/items/{urllib.parse.quote(item_id, safe='')}/similar?k={int(k)}")

    def events(self, events: list[dict]) -> dict:
        """Log events; each without an event_id gets one here, so a retry cannot count it twice."""
        batch = [e if e.get("event_id") else {**e, "event_id": uuid.uuid4().hex} for e in events]
        return self.call("POST", "/v1/events", batch)

    def put_item(self, item_id: str, item: dict) -> dict:
        return self.call("PUT", f"/v1/items/{urllib.parse.quote(item_id, safe='')}", item)

    def remove_item(self, item_id: str) -> dict:
        return self.call("DELETE", f"/v1/items/{urllib.parse.quote(item_id, safe='')}")

    def forget(self, user_id: str) -> dict:
        return self.call("DELETE", f"/v1/users/{urllib.parse.quote(user_id, safe='')}")

    def health(self) -> dict:
        return self.call("GET", "/healthz")

    # --- transport --------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request with retries; returns the decoded JSON answer or raises ApiError."""
        deadline = time.monotonic() + self.max_wait_s
        attempt = 0
        while True:
            attempt += 1
            try:
                status, answer, retry_after = self._once(method, path, body)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                status, answer, retry_after = 0, {"detail": f"{type(e).__name__}: {e}"}, None
            if 200 <= status < 300:
                return answer
            if status not in RETRY_STATUS and status != 0:
                raise ApiError(status, answer)
            wait = retry_after if retry_after is not None else min(0.1 * 2 ** attempt, 2.0)
            if time.monotonic() + wait > deadline:
                raise ApiError(status, answer)
            time.sleep(wait)

    def _once(self, method: str, path: str, body: Any) -> tuple[int, Any, float | None]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("X-API-Key", self.api_key)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as r:
                return r.status, _decode(r.read()), None
        except urllib.error.HTTPError as e:
            raw = e.headers.get("Retry-After")
            try:
                retry_after = float(raw) if raw is not None else None
            except ValueError:
                retry_after = None
            return e.code, _decode(e.read()), retry_after


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return {"detail": raw.decode(errors="replace")[:500]}
