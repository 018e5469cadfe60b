"""HTTP delivery of outbox rows (a FHIR rest-hook, a webhook): one POST per message.

The channel knows nothing of what it carries: ``render(kind, payload, message_id) -> bytes`` is given by whoever
wires it (the composition root), as is the media type. The answer decides (RFC 9110 15):

- 2xx: accepted (the reply body is kept);
- transient (retried with back-off, interfaces.outbound.dispatcher): no connection, a timeout, 408 Request Timeout,
  425 Too Early, 429 Too Many Requests, and every 5xx;
- permanent (dead letter at once, with the status and the start of the body): every other answer - 3xx (a
  redirect is not followed: the endpoint is configured wrong), 400, 401, 403, 404, 405, 410, 413, 415, 422, ...

Every request carries ``X-Message-Id`` (the row's stable message id: the same on every attempt, so a receiver can
drop a repeat) and the configured headers (``Name: value``, e.g. an Authorization). Only http and https URLs are
accepted.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from interfaces.outbound.channel import PermanentError, TransientError

TRANSIENT_STATUSES = frozenset({408, 425, 429})
REPLY_LIMIT = 2000


def parse_headers(lines: Sequence[str]) -> list[tuple[str, str]]:
    """``Name: value`` lines as pairs; ValueError naming the first that is not one."""
    pairs = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip() or any(c in name for c in " \t\r\n") or "\n" in value or "\r" in value:
            raise ValueError(f"{line!r} is not an HTTP header 'Name: value'")
        pairs.append((name.strip(), value.strip()))
    return pairs


def check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http or https URL")


class HttpChannel:
    """POST each message to ``url`` (see the module docstring)."""

    def __init__(self, name: str, url: str, *, render: Callable[[str, dict, str], bytes], content_type: str,
                 headers: Sequence[str] = (), timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None):
        check_url(url)
        self.name = name
        self.url = url
        self._render = render
        self.content_type = content_type
        self.headers = parse_headers(headers)
        self.timeout = timeout
        self.ssl_context = ssl_context

    def render(self, kind: str, payload: dict, message_id: str) -> bytes:
        return self._render(kind, payload, message_id)

    def deliver(self, data: bytes, message_id: str) -> bytes | None:
        parts = urlsplit(self.url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.timeout,
                                               context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        headers = {"Content-Type": self.content_type, "X-Message-Id": message_id, "Content-Length": str(len(data))}
        headers.update(self.headers)
        try:
            conn.request("POST", path, body=data, headers=headers)
            response = conn.getresponse()
            reply = response.read(REPLY_LIMIT)
            status = response.status
        except (socket.timeout, TimeoutError) as exc:
            raise TransientError(f"POST {self.url}: no answer within {self.timeout:g} s ({exc})") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"POST {self.url}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if 200 <= status < 300:
            return reply
        text = f"POST {self.url}: HTTP {status} {http.client.responses.get(status, '')}".rstrip()
        body = reply.decode("utf-8", "replace").strip()
        if body:
            text += f": {body[:300]}"
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise TransientError(text, reply)
        raise PermanentError(text, reply)

    def close(self) -> None:
        """Nothing to release: every delivery has its own connection."""
