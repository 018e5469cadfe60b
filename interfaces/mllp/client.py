"""MLLP client - the transport layer of outbound HL7 v2 (bytes out, reply bytes in; no HL7 parsing).

HL7 v2.5.1 Appendix C (MLLP Release 2): one persistent TCP (optionally TLS) connection; each message is sent as a
VT <message> FS CR block and answered by one block. Blocking sockets with TCP_NODELAY; used by tests, bench tools and
the outbound delivery path.

The reply is buffered until its trailer however the peer splits it (BUG-06), and the timeout bounds the whole
exchange - sending the message and receiving the complete reply - not a single read. After any error the connection
is closed (its state is unknown: a late reply must never be taken for the answer to the next message); the next
``send`` opens a new one. All errors are ``MLLPError``s, so a caller can treat them as transient.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import ssl
import time
from collections.abc import Iterator

from .framing import FrameReader, frame

__all__ = ["MLLPClient", "MLLPConnectionClosed", "MLLPError", "MLLPTimeout"]

_READ_SIZE = 64 * 1024


class MLLPError(Exception):
    """Any failure of an MLLP exchange."""


class MLLPTimeout(MLLPError):
    """No complete reply (or no connection) within the timeout."""


class MLLPConnectionClosed(MLLPError):
    """The connection could not be opened, or was closed or reset by the peer."""


class MLLPClient:
    """A persistent MLLP connection, opened at construction. Not thread-safe: one exchange at a time."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._sock: socket.socket | None = None
        self._reader = FrameReader()
        self._replies: collections.deque[bytes] = collections.deque()
        self.connect()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        """Open the connection (and TLS handshake) if it is not open."""
        if self._sock is not None:
            return
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                try:
                    sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError as exc:
            raise MLLPTimeout(f"connecting to {self.host}:{self.port}: {exc}") from exc
        except OSError as exc:  # refused, unreachable, TLS failure (ssl.SSLError is an OSError)
            raise MLLPConnectionClosed(f"connecting to {self.host}:{self.port}: {exc}") from exc
        self._sock = sock
        self._reader = FrameReader()
        self._replies.clear()

    def send(self, payload: bytes) -> bytes:
        """Send one message and return the payload of its reply frame; the timeout covers the whole exchange."""
        deadline = time.monotonic() + self.timeout
        self._send(frame(payload), deadline)
        return self._receive(deadline)

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are, without framing (tests use it for malformed framing); see ``receive``."""
        self._send(data, time.monotonic() + self.timeout)

    def receive(self, timeout: float | None = None) -> bytes:
        """Return the payload of the next reply frame, waiting up to ``timeout`` s (default: the client's)."""
        return self._receive(time.monotonic() + (self.timeout if timeout is None else timeout))

    def drop_if_stale(self) -> bool:
        """Close an idle connection that the peer has closed, reset, or sent unasked-for bytes on (a late or
        unsolicited reply must never be read as the answer to the next message). True when it was closed."""
        sock = self._sock
        if sock is None:
            return False
        if self._replies:
            self.close()
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            sock.setblocking(False)
            sock.recv(_READ_SIZE)   # end of stream, or bytes nobody asked for: either way the state is unknown
        except (BlockingIOError, ssl.SSLWantReadError):
            return False   # TLS protocol records only (e.g. session tickets): nothing for us
        except (OSError, ValueError):
            pass
        self.close()
        return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> MLLPClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, data: bytes, deadline: float) -> None:
        self.connect()
        with self._failing("sending"):
            self._sock.settimeout(_remaining(deadline))
            self._sock.sendall(data)

    def _receive(self, deadline: float) -> bytes:
        if self._replies:
            return self._replies.popleft()
        if self._sock is None:
            raise MLLPConnectionClosed(f"not connected to {self.host}:{self.port}")
        with self._failing("waiting for the reply"):
            while not self._replies:
                self._sock.settimeout(_remaining(deadline))
                data = self._sock.recv(_READ_SIZE)
                if not data:
                    raise MLLPConnectionClosed(f"{self.host}:{self.port} closed the connection")
                self._replies.extend(event.payload for event in self._reader.feed(data))
        return self._replies.popleft()

    @contextlib.contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """On any error close the connection (its state is unknown now) and raise an MLLPError."""
        try:
            yield
        except TimeoutError as exc:
            self.close()
            raise MLLPTimeout(f"{doing} ({self.host}:{self.port}): timed out after {self.timeout} s") from exc
        except OSError as exc:
            self.close()
            raise MLLPConnectionClosed(f"{doing} ({self.host}:{self.port}): {exc}") from exc
        except BaseException:
            self.close()
            raise


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    return remaining
