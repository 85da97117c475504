"""Telling people that a conversation waits for them: the handoff webhook.

``chattune serve --handoff-webhook URL`` POSTs one JSON event each time a conversation is
handed off (by a route or through the API)::

    {"event": "handoff", "conversation_id": "conv-...", "state": "waiting",
     "reason": "sentiment below -0.5 for 1 turn(s)", "nlu": {...} | null,
     "at": "2026-12-01T10:00:00+00:00"}

Delivery is fire-and-forget: the customer's reply never waits for it and never fails
because of it. A few worker threads deliver (``MAX_IN_FLIGHT``), each try has a short
timeout and no retry, redirects are not followed (a webhook that redirects is a
misconfiguration, and following one could reach another scheme or host), and an event that
finds every worker busy and the backlog full is dropped with a warning: a slow or dead
webhook costs the server a bounded number of threads and a log line per event, never more.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

#: Deliveries at once, and events that may wait behind them before new ones are dropped.
MAX_IN_FLIGHT = 4
MAX_BACKLOG = 64
TIMEOUT_S = 5.0


def check_webhook_url(url: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host; ValueError saying why not.

    Example:
        >>> check_webhook_url("https://hooks.example.com/chattune")
        'https://hooks.example.com/chattune'
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the handoff webhook must be an http:// or https:// URL, not {url!r}")
    if not parts.hostname:
        raise ValueError(f"the handoff webhook URL {url!r} has no host")
    return url


def handoff_event(
    conversation_id: str, state: str, reason: str | None, nlu: dict[str, Any] | None
) -> dict[str, Any]:
    """The JSON body of one webhook call."""
    return {
        "event": "handoff",
        "conversation_id": conversation_id,
        "state": state,
        "reason": reason,
        "nlu": nlu,
        "at": dt.datetime.now(dt.UTC).isoformat(),
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is then an HTTPError: logged, not followed


class Webhook:
    """Delivers events to one URL in the background (see the module doc).

    ``send`` is safe to call from any thread (the event loop, a route's worker thread) and
    returns at once.
    """

    def __init__(self, url: str, timeout: float = TIMEOUT_S) -> None:
        self.url, self.timeout = check_webhook_url(url), timeout
        parts = urlsplit(url)  # logged without path or query: they may hold a token
        self.shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
        self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="webhook")
        self._opener = urllib.request.build_opener(_NoRedirects)
        self._pending = threading.BoundedSemaphore(MAX_IN_FLIGHT + MAX_BACKLOG)

    def send(self, event: dict[str, Any]) -> bool:
        """Queue ``event`` for delivery; ``False`` (and a warning) if the backlog is full."""
        if not self._pending.acquire(blocking=False):
            log.warning("handoff webhook backlog full: dropped the event for %s",
                        event.get("conversation_id"))  # fmt: skip
            return False
        try:
            self._pool.submit(self._deliver, event)
        except RuntimeError:  # shutting down
            self._pending.release()
            return False
        return True

    def _deliver(self, event: dict[str, Any]) -> None:
        try:
            request = urllib.request.Request(
                self.url,
                data=json.dumps(event).encode(),
                headers={"Content-Type": "application/json", "User-Agent": "chattune"},
                method="POST",
            )
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(1024)
        except (urllib.error.URLError, OSError, ValueError) as e:
            log.warning("handoff webhook %s failed for %s: %s", self.shown,
                        event.get("conversation_id"), e)  # fmt: skip
        finally:
            self._pending.release()

    def close(self, wait: bool = False) -> None:
        """Stop taking events; ``wait`` for the ones being delivered."""
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
