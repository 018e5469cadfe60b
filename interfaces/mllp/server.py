"""MLLP listener - the transport layer of inbound HL7 v2 (bytes in, reply bytes out; no HL7 parsing, no database).

HL7 v2.5.1 Appendix C (MLLP Release 2): persistent TCP connections carrying VT <message> FS CR blocks; each message
is answered by one block (the acknowledgement) before the next message of the same connection is answered.

Threading model: an asyncio event loop in one dedicated thread owns every socket; the handler - a plain synchronous
function that stores the message durably and builds the ACK (DESIGN.md 3: never acknowledge before the message is
durable) - runs in a ThreadPoolExecutor. The messages of one connection are handled strictly one after another in
arrival order (read frame -> handler -> write reply -> next frame; frames that arrive meanwhile wait in the reader),
while different connections run in parallel. ``ordering_key(event)`` (optional) gives a frame one key or several
(e.g. the patients a message is about): frames that share a key are handled in their arrival order, across
connections; frames with no key in common run in parallel.

The handler contract: ``handler(event, peer) -> bytes | None``. It should never raise: a message it cannot take must
still be answered (AE/AR). If it raises anyway, the exception is logged with the peer, nothing is sent for that frame
(the sender times out and resends) and the connection stays open. ``None`` means "send nothing". For an oversize
frame (``event.oversize``) the handler gets the first 64 KiB and the total size, so it can answer AR.

TLS: the accepted TCP connection is upgraded with ``StreamWriter.start_tls`` inside its own task, bounded by
``tls_handshake_timeout``, so a client that connects and stays silent never blocks anybody else (DESIGN.md 5: the
pynetdicom accept loop does). Doing the handshake per connection rather than through ``start_server(ssl=...)`` also
lets ``max_connections`` count connections that are still handshaking and lets ``stop()`` cancel those handshakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

from .framing import FrameEvent, FrameReader, frame

__all__ = ["Handler", "MLLPServer", "MLLPStats"]

log = logging.getLogger("interfaces.mllp")

Handler = Callable[[FrameEvent, str], "bytes | None"]

_READ_SIZE = 64 * 1024
_CLOSE_GRACE = 1.0  # seconds a closing connection gets to flush its last reply / TLS close_notify


@dataclass
class MLLPStats:
    """Counters of one server (updated by its event loop thread; read them from anywhere)."""

    connections: int = 0  # accepted in total
    active: int = 0  # open now
    refused: int = 0  # closed at once because max_connections were open
    frames: int = 0  # frames received, oversize included
    oversize: int = 0  # frames larger than max_message_size
    discarded_bytes: int = 0  # bytes outside frames and of unterminated frames
    handler_errors: int = 0  # handler calls that raised
    idle_closed: int = 0  # connections closed by the idle timeout
    frame_timeouts: int = 0  # connections closed because a started frame was not completed in time
    tls_failures: int = 0  # failed or timed-out TLS handshakes


@dataclass(eq=False)
class _Connection:
    peer: str
    writer: asyncio.StreamWriter
    task: asyncio.Task
    busy: bool = False  # inside handler call or reply write: stop() lets it finish


class MLLPServer:
    """MLLP listener running its own asyncio loop in a thread. ``start()``/``stop()`` or use it as a context manager."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 2575,
        *,
        max_message_size: int = 16 * 1024 * 1024,
        idle_timeout: float = 600.0,
        frame_timeout: float = 60.0,
        max_connections: int = 256,
        workers: int = 8,
        ssl_context: ssl.SSLContext | None = None,
        name: str = "mllp",
        tls_handshake_timeout: float = 30.0,
        ordering_key: Callable[[FrameEvent], str | Iterable[str] | None] | None = None,
    ) -> None:
        self.handler = handler
        self.ordering_key = ordering_key
        self.host = host
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.max_connections = max_connections
        self.workers = workers
        self.ssl_context = ssl_context
        self.name = name
        self.tls_handshake_timeout = tls_handshake_timeout
        self.stats = MLLPStats()
        self._requested_port = port
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._stop_timeout = 5.0
        self._closing = False
        self._conns: set[_Connection] = set()  # open connections (counted against max_connections)
        self._tasks: dict[asyncio.Task, _Connection] = {}  # connection tasks until they end, closing included
        self._executor: ThreadPoolExecutor | None = None
        self._key_tails: dict[str, asyncio.Future] = {}  # ordering key -> done-future of its latest frame

    # -- control, from any thread ----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port=0); the requested one before start()."""
        return self._port if self._port is not None else self._requested_port

    def start(self) -> None:
        """Bind and listen; return once listening. A bind error (e.g. port in use) is raised here."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"{self.name}-handler")
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-loop", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._executor.shutdown(wait=False)
            raise self._start_error

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, let in-flight handler calls finish (up to ``timeout`` s), close connections, join."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None or not thread.is_alive():
            return
        self._stop_timeout = timeout
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(self._stop_requested.set)
        thread.join(timeout + 2 * _CLOSE_GRACE)
        if thread.is_alive():
            log.warning("%s: event loop thread did not end within %.1f s", self.name, timeout)

    def __enter__(self) -> MLLPServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- event loop thread -----------------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop_requested = asyncio.Event()
        try:
            server = await asyncio.start_server(self._on_connect, self.host, self._requested_port, limit=_READ_SIZE)
            self._port = server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to the caller of start()
            self._start_error = exc
            return
        finally:
            self._ready.set()
        tls = " (TLS)" if self.ssl_context is not None else ""
        log.debug("%s: listening on %s:%d%s", self.name, self.host, self._port, tls)
        await self._stop_requested.wait()
        await self._shutdown(server)

    async def _shutdown(self, server: asyncio.Server) -> None:
        self._closing = True
        server.close()
        conns = list(self._tasks.values())
        for conn in conns:
            if not conn.busy:  # waiting for bytes or for a handshake: nothing in flight
                conn.task.cancel()
        tasks = [conn.task for conn in conns]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._stop_timeout)
            for task in pending:
                log.warning("%s: stop: a handler call did not finish within %.1f s", self.name, self._stop_timeout)
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in conns:  # whatever did not close gracefully within the grace period
            conn.writer.transport.abort()
        await server.wait_closed()
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks run
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("%s: stopped", self.name)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._closing or len(self._conns) >= self.max_connections:
            self.stats.refused += 1
            log.warning("%s: refused connection from %s: %d connections open (max_connections %d)",
                        self.name, peer, len(self._conns), self.max_connections)
            writer.transport.abort()
            return
        conn = _Connection(peer, writer, asyncio.current_task())
        self._conns.add(conn)
        self._tasks[conn.task] = conn
        conn.task.add_done_callback(self._tasks.pop)
        self.stats.connections += 1
        self.stats.active = len(self._conns)
        log.debug("%s: connection from %s", self.name, peer)
        try:
            if self.ssl_context is not None:
                if not await self._start_tls(conn):
                    return
            await self._serve_connection(conn, reader)
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("%s: connection from %s lost: %r", self.name, peer, exc)
        except asyncio.CancelledError:
            # stop() cancels the connections it closes. Ending normally: asyncio 3.11's StreamReaderProtocol asks
            # a finished handler task for its exception, which raises for a cancelled task (logged as an ERROR
            # traceback at every stop with a connection open; fixed in 3.12)
            log.debug("%s: connection from %s closed by the listener's stop", self.name, peer)
        except Exception:
            log.exception("%s: connection from %s failed", self.name, peer)
        finally:
            self._conns.discard(conn)
            self.stats.active = len(self._conns)
            writer.close()
            log.debug("%s: %s disconnected", self.name, peer)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), _CLOSE_GRACE)

    async def _start_tls(self, conn: _Connection) -> bool:
        try:
            await conn.writer.start_tls(self.ssl_context, ssl_handshake_timeout=self.tls_handshake_timeout)
            return True
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self.stats.tls_failures += 1
            log.warning("%s: TLS handshake with %s failed: %r", self.name, conn.peer, exc)
            return False

    async def _serve_connection(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        """Read frames until the peer closes, stays silent for ``idle_timeout`` or takes longer than
        ``frame_timeout`` to complete a frame it started (BUG-06: timeouts apply to the whole frame, so a
        sender trickling bytes cannot hold a connection slot forever)."""
        frames = FrameReader(self.max_message_size)
        loop = asyncio.get_running_loop()
        frame_deadline: float | None = None
        while not self._closing:
            wait = self.idle_timeout
            if frame_deadline is not None:
                wait = max(0.0, min(wait, frame_deadline - loop.time()))
            try:
                async with asyncio.timeout(wait):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                if frame_deadline is not None and loop.time() >= frame_deadline:
                    self.stats.frame_timeouts += 1
                    self.stats.discarded_bytes += frames.pending
                    log.warning("%s: %s did not complete a frame within %.0f s: %d bytes lost, connection closed",
                                self.name, conn.peer, self.frame_timeout, frames.pending)
                    return
                self.stats.idle_closed += 1
                log.info("%s: closing idle connection from %s (nothing received for %.0f s)",
                         self.name, conn.peer, self.idle_timeout)
                return
            if not data:
                if frames.pending:
                    self.stats.discarded_bytes += frames.pending
                    log.warning("%s: %s closed the connection inside a frame: %d bytes lost",
                                self.name, conn.peer, frames.pending)
                return
            discarded = frames.discarded
            events = frames.feed(data)
            if frames.discarded != discarded:
                self.stats.discarded_bytes += frames.discarded - discarded
                skipped = frames.discarded - discarded
                log.log(logging.DEBUG if skipped <= 2 else logging.WARNING,  # a stray CR LF between frames is common
                        "%s: %s: skipped %d bytes outside MLLP frames", self.name, conn.peer, skipped)
            if not frames.pending:
                frame_deadline = None
            elif frame_deadline is None or events:  # a new frame began in this read
                frame_deadline = loop.time() + self.frame_timeout
            for event in events:
                if self._closing:  # not answered: the sender resends it
                    return
                await self._handle(conn, event)

    async def _handle(self, conn: _Connection, event: FrameEvent) -> None:
        self.stats.frames += 1
        if event.oversize:
            self.stats.oversize += 1
            log.warning("%s: %s sent a %d-byte message (max_message_size %d)",
                        self.name, conn.peer, event.size, self.max_message_size)
        conn.busy = True
        keys = self._keys_of(event)
        loop = asyncio.get_running_loop()
        # Ordering: each key remembers the frame that came last with it (its done-future). A frame waits for the
        # frames before it of every one of its keys, registered in one step on arrival, so frames sharing a key
        # (one patient's messages on several connections; a merge and the messages of both its patients) are
        # handled in arrival order, and a frame with several keys can neither overtake nor deadlock.
        done = loop.create_future() if keys else None
        before = {self._key_tails[k] for k in keys if k in self._key_tails}
        for k in keys:
            self._key_tails[k] = done
        try:
            try:
                if before:
                    await asyncio.wait(before)
                reply = await loop.run_in_executor(self._executor, self.handler, event, conn.peer)
            except Exception:
                self.stats.handler_errors += 1
                log.exception("%s: handler failed on a message from %s; no reply sent", self.name, conn.peer)
                return
            if reply is not None:
                conn.writer.write(frame(reply))
                await conn.writer.drain()
        finally:
            conn.busy = False
            if done is not None:
                done.set_result(None)
                for k in keys:
                    if self._key_tails.get(k) is done:
                        del self._key_tails[k]

    def _keys_of(self, event: FrameEvent) -> list[str]:
        """The frame's ordering keys: ``ordering_key`` may give one key, several (an iterable) or None."""
        if self.ordering_key is None:
            return []
        try:
            found = self.ordering_key(event)
        except Exception:
            log.exception("%s: ordering_key failed; the frame is handled without ordering", self.name)
            return []
        if found is None:
            return []
        return [found] if isinstance(found, str) else list(dict.fromkeys(k for k in found if k))


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        return f"{host}:{peer[1]}"
    return str(peer)
