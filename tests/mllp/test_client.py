"""MLLPClient against tiny raw-socket peers: split replies (BUG-06), whole-frame timeouts, closed connections."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from interfaces.mllp import MLLPClient, MLLPConnectionClosed, MLLPError, MLLPTimeout, frame

from .conftest import wait_until

HOST = "127.0.0.1"


def read_frame(conn: socket.socket) -> bytes:
    """Read up to and including one FS CR (bounded by the socket's timeout)."""
    data = b""
    while not data.endswith(b"\x1c\x0d"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@contextmanager
def raw_peer(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """Listen on a loopback port; run ``serve(conn)`` for the first connection in a thread; yield the port."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(5)

    def run() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                serve(conn)
            except OSError:
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(10)


def test_reply_dribbled_byte_by_byte_is_read_completely():
    reply = b"MSH|^~\\&|RIS|RAD|HIS|W|20240310||ACK^A08|A1|P|2.5\rMSA|AA|B06-1\r"
    received: list[bytes] = []

    def serve(conn):
        received.append(read_frame(conn))
        for byte in frame(reply):
            conn.sendall(bytes([byte]))
            time.sleep(0.001)

    with raw_peer(serve) as port, MLLPClient(HOST, port, timeout=5) as client:
        assert client.send(b"MSH|B06") == reply
    assert received == [frame(b"MSH|B06")]


def test_no_reply_raises_timeout_and_closes():
    done = threading.Event()

    def serve(conn):
        read_frame(conn)
        done.wait(5)

    with raw_peer(serve) as port:
        client = MLLPClient(HOST, port, timeout=0.3)
        try:
            with pytest.raises(MLLPTimeout):
                client.send(b"MSH|1")
            assert not client.connected
        finally:
            done.set()
            client.close()


def test_timeout_covers_the_whole_frame_not_each_read():
    stop = threading.Event()

    def serve(conn):
        read_frame(conn)
        conn.sendall(b"\x0bMSH|")
        for _ in range(100):  # a byte every 50 ms: every single read succeeds, the frame never ends
            if stop.wait(0.05):
                return
            conn.sendall(b"x")

    with raw_peer(serve) as port, MLLPClient(HOST, port, timeout=0.5) as client:
        try:
            t0 = time.monotonic()
            with pytest.raises(MLLPTimeout):
                client.send(b"MSH|1")
            assert time.monotonic() - t0 < 4
        finally:
            stop.set()


def test_peer_closing_raises_connection_closed():
    with raw_peer(lambda conn: read_frame(conn)) as port, MLLPClient(HOST, port, timeout=5) as client:
        with pytest.raises(MLLPConnectionClosed):
            client.send(b"MSH|1")
        assert not client.connected


def test_connection_refused_raises_connection_closed():
    with socket.create_server((HOST, 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(MLLPConnectionClosed):
        MLLPClient(HOST, port, timeout=2)
    assert issubclass(MLLPTimeout, MLLPError) and issubclass(MLLPConnectionClosed, MLLPError)


def test_several_replies_in_one_read_are_kept_in_order():
    def serve(conn):
        read_frame(conn)
        conn.sendall(frame(b"R1") + b"\n" + frame(b"R2"))

    with raw_peer(serve) as port, MLLPClient(HOST, port, timeout=5) as client:
        assert client.send(b"MSH|1") == b"R1"
        assert client.receive() == b"R2"


def test_reconnects_after_the_server_closed_an_idle_connection(make_server):
    server = make_server(idle_timeout=0.2)
    with MLLPClient(HOST, server.port, timeout=5) as client:
        assert client.send(b"MSH|1") == b"ACK:MSH|1"
        assert wait_until(lambda: server.stats.idle_closed == 1)
        with pytest.raises(MLLPConnectionClosed):
            client.send(b"MSH|2")  # a stale connection: never silently resent by the client itself
        assert client.send(b"MSH|3") == b"ACK:MSH|3"
    assert server.stats.connections == 2
