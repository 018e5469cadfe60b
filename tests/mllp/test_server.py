"""MLLPServer over real loopback sockets (HL7 v2.5.1 Appendix C): persistence, ordering, parallelism, limits."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from interfaces.mllp import MLLPClient, MLLPServer, frame

from .conftest import echo, wait_until

HOST = "127.0.0.1"


def raw_connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True when the peer closed the connection (EOF or reset) before the socket's timeout."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_start_reports_port_and_context_manager_stops():
    with MLLPServer(echo, HOST, 0) as server:
        assert server.port > 0
        with MLLPClient(HOST, server.port, timeout=5) as client:
            assert client.send(b"MSH|1") == b"ACK:MSH|1"
    with pytest.raises(OSError):
        socket.create_connection((HOST, server.port), timeout=2).close()


def test_port_in_use_raises_in_caller(make_server):
    server = make_server()
    other = MLLPServer(echo, HOST, server.port)
    with pytest.raises(OSError):
        other.start()


def test_100_messages_over_one_persistent_connection_in_order(make_server):
    peers: list[str] = []

    def handler(event, peer):
        peers.append(peer)
        return echo(event, peer)

    server = make_server(handler)
    with MLLPClient(HOST, server.port, timeout=5) as client:
        for i in range(100):
            assert client.send(b"MSH|%03d|payload" % i) == b"ACK:MSH|%03d|payload" % i
    assert len(set(peers)) == 1
    assert server.stats.connections == 1 and server.stats.frames == 100


def test_frames_sent_together_are_answered_one_by_one_in_order(make_server):
    server = make_server()
    with MLLPClient(HOST, server.port, timeout=5) as client:
        client.send_raw(b"".join(frame(b"MSH|%d" % i) for i in range(20)))
        assert [client.receive() for _ in range(20)] == [b"ACK:MSH|%d" % i for i in range(20)]


def test_8_concurrent_connections_50_messages_each(make_server):
    seen: dict[str, list[int]] = {}
    lock = threading.Lock()

    def handler(event, peer):
        with lock:
            seen.setdefault(peer, []).append(int(event.payload.split(b"|")[2]))
        return echo(event, peer)

    server = make_server(handler)
    errors: list[BaseException] = []

    def run(conn_no: int) -> None:
        try:
            with MLLPClient(HOST, server.port, timeout=10) as client:
                for i in range(50):
                    reply = client.send(b"MSH|c%d|%d" % (conn_no, i))
                    assert reply == b"ACK:MSH|c%d|%d" % (conn_no, i)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(seen) == 8
    assert all(numbers == list(range(50)) for numbers in seen.values())
    assert server.stats.frames == 400 and server.stats.connections == 8


def test_slow_handler_on_one_connection_does_not_block_another(make_server):
    release, slow_started = threading.Event(), threading.Event()

    def handler(event, peer):
        if event.payload.startswith(b"SLOW"):
            slow_started.set()
            release.wait(10)
        return echo(event, peer)

    server = make_server(handler)
    with MLLPClient(HOST, server.port, timeout=10) as slow, MLLPClient(HOST, server.port, timeout=5) as fast:
        slow.send_raw(frame(b"SLOW|1"))
        assert slow_started.wait(5)
        for i in range(5):
            assert fast.send(b"MSH|%d" % i) == b"ACK:MSH|%d" % i
        assert not release.is_set()
        release.set()
        assert slow.receive() == b"ACK:SLOW|1"


def test_messages_of_one_connection_wait_for_the_previous_reply(make_server):
    release = threading.Event()
    calls: list[bytes] = []

    def handler(event, peer):
        calls.append(event.payload)
        if event.payload == b"FIRST":
            release.wait(10)
        return echo(event, peer)

    server = make_server(handler, workers=4)
    with MLLPClient(HOST, server.port, timeout=10) as client:
        client.send_raw(frame(b"FIRST"))
        assert wait_until(lambda: calls == [b"FIRST"])
        client.send_raw(frame(b"SECOND"))
        time.sleep(0.2)  # give a wrongly parallel server the chance to call the handler again
        assert calls == [b"FIRST"]
        release.set()
        assert [client.receive(), client.receive()] == [b"ACK:FIRST", b"ACK:SECOND"]


def test_oversize_message_is_answered_and_connection_stays_usable(make_server):
    sizes: list[tuple[bool, int, int]] = []

    def handler(event, peer):
        sizes.append((event.oversize, event.size, len(event.payload)))
        return echo(event, peer)

    server = make_server(handler, max_message_size=100 * 1024)
    big = b"MSH|big|" + b"x" * (300 * 1024)
    with MLLPClient(HOST, server.port, timeout=10) as client:
        assert client.send(big) == b"AR:too large:%d:MSH|big|" % len(big)
        assert client.send(b"MSH|next") == b"ACK:MSH|next"
    assert sizes == [(True, len(big), 64 * 1024), (False, 8, 8)]
    assert server.stats.oversize == 1


def test_junk_then_good_frame(make_server):
    server = make_server()
    with MLLPClient(HOST, server.port, timeout=5) as client:
        client.send_raw(b"\x00\x00 \r\n junk \x1c\r")
        client.send_raw(b"\x0bMSH|never terminated")
        client.send_raw(frame(b"MSH|good"))
        assert client.receive() == b"ACK:MSH|good"
    assert wait_until(lambda: server.stats.discarded_bytes == len(b"\x00\x00 \r\n junk \x1c\r\x0bMSH|never terminated"))
    assert server.stats.frames == 1


def test_handler_returning_none_sends_nothing(make_server):
    server = make_server(lambda event, peer: None if event.payload == b"QUIET" else echo(event, peer))
    with MLLPClient(HOST, server.port, timeout=5) as client:
        client.send_raw(frame(b"QUIET"))
        assert client.send(b"MSH|loud") == b"ACK:MSH|loud"


def test_handler_exception_keeps_the_connection(make_server, caplog):
    def handler(event, peer):
        if event.payload == b"BOOM":
            raise RuntimeError("handler bug")
        return echo(event, peer)

    server = make_server(handler)
    with caplog.at_level(logging.ERROR, logger="interfaces.mllp"), MLLPClient(HOST, server.port, timeout=5) as client:
        client.send_raw(frame(b"BOOM"))
        assert client.send(b"MSH|after") == b"ACK:MSH|after"
        peer = "%s:%d" % client._sock.getsockname()[:2]
    assert server.stats.handler_errors == 1
    [record] = [r for r in caplog.records if r.exc_info]
    assert peer in record.getMessage() and "handler bug" in str(record.exc_info[1])


def test_idle_timeout_closes_the_connection(make_server):
    server = make_server(idle_timeout=0.3)
    with MLLPClient(HOST, server.port, timeout=5) as client:
        assert client.send(b"MSH|1") == b"ACK:MSH|1"
        client._sock.settimeout(5)
        assert closed_by_peer(client._sock)
    assert wait_until(lambda: server.stats.idle_closed == 1 and server.stats.active == 0)


def test_a_frame_trickled_byte_by_byte_is_cut_off_by_the_frame_timeout(make_server):
    """BUG-06: the timeout applies to the whole frame; one byte now and then does not keep it open."""
    server = make_server(idle_timeout=5, frame_timeout=0.6)
    with raw_connect(server.port) as sock:
        sock.sendall(b"\x0bMSH|")
        started = time.monotonic()
        closed = False
        for _ in range(40):  # one byte every 0.1 s: never idle for long
            try:
                sock.sendall(b"x")
            except OSError:
                closed = True
                break
            if wait_until(lambda: server.stats.frame_timeouts == 1, timeout=0.1):
                closed = True
                break
        assert closed and time.monotonic() - started < 3
    assert wait_until(lambda: server.stats.active == 0)
    assert server.stats.frame_timeouts == 1 and server.stats.idle_closed == 0


def test_frames_completed_in_time_reset_the_frame_timeout(make_server):
    server = make_server(idle_timeout=5, frame_timeout=0.5)
    with MLLPClient(HOST, server.port, timeout=5) as client:
        for i in range(4):  # 4 frames over about 1.2 s, each complete within its own 0.5 s
            assert client.send(f"MSH|{i}".encode()) == f"ACK:MSH|{i}".encode()
            time.sleep(0.3)
    assert server.stats.frame_timeouts == 0


def test_max_connections(make_server):
    server = make_server(max_connections=2)
    first, second = MLLPClient(HOST, server.port, timeout=5), MLLPClient(HOST, server.port, timeout=5)
    try:
        assert first.send(b"MSH|1") and second.send(b"MSH|2")
        third = raw_connect(server.port)
        with third:
            assert closed_by_peer(third)
        assert server.stats.refused == 1
        first.close()
        assert wait_until(lambda: server.stats.active == 1)
        with MLLPClient(HOST, server.port, timeout=5) as fourth:
            assert fourth.send(b"MSH|4") == b"ACK:MSH|4"
    finally:
        first.close()
        second.close()


def test_stop_with_an_idle_connection_logs_no_error(make_server, caplog):
    """asyncio 3.11 logged an ERROR traceback (CancelledError in reader.read) for each connection a stop closed."""
    server = make_server(echo)
    with caplog.at_level(logging.DEBUG), MLLPClient(HOST, server.port, timeout=5) as client:
        assert wait_until(lambda: server.stats.active == 1, timeout=5)
        server.stop(timeout=5)
        client._sock.settimeout(5)
        assert closed_by_peer(client._sock)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_stop_with_connected_clients_returns_promptly_and_finishes_in_flight_messages(make_server):
    started = threading.Event()

    def handler(event, peer):
        if event.payload == b"SLOW":
            started.set()
            time.sleep(0.3)
        return echo(event, peer)

    server = make_server(handler)
    idle = [MLLPClient(HOST, server.port, timeout=5) for _ in range(3)]
    busy = MLLPClient(HOST, server.port, timeout=5)
    try:
        busy.send_raw(frame(b"SLOW") + frame(b"QUEUED"))  # QUEUED is never handled: stop comes first
        assert started.wait(5)
        t0 = time.monotonic()
        server.stop(timeout=5)
        assert time.monotonic() - t0 < 5
        assert busy.receive() == b"ACK:SLOW"
        for client in [busy, *idle]:
            client._sock.settimeout(5)
            assert closed_by_peer(client._sock)
        assert server.stats.frames == 1
        with pytest.raises(OSError):
            socket.create_connection((HOST, server.port), timeout=2).close()
    finally:
        for client in [busy, *idle]:
            client.close()


def test_stop_does_not_wait_beyond_its_timeout_for_a_stuck_handler(make_server):
    release, started = threading.Event(), threading.Event()

    def handler(event, peer):
        started.set()
        release.wait(10)
        return echo(event, peer)

    server = make_server(handler)
    with MLLPClient(HOST, server.port, timeout=5) as client:
        client.send_raw(frame(b"STUCK"))
        assert started.wait(5)
        t0 = time.monotonic()
        server.stop(timeout=0.5)
        elapsed = time.monotonic() - t0
        release.set()
        assert elapsed < 4
        client._sock.settimeout(5)
        assert closed_by_peer(client._sock)


def test_message_split_into_separate_tcp_writes(make_server):
    received: list[bytes] = []
    server = make_server(lambda event, peer: received.append(event.payload) or b"ACK")
    data = frame(b"MSH|split|message")
    with raw_connect(server.port) as sock:
        for i in range(len(data)):
            sock.sendall(data[i:i + 1])
            time.sleep(0.001)
        assert wait_until(lambda: received == [b"MSH|split|message"])


@pytest.mark.corpus
def test_bug06_chunks_make_exactly_one_message(make_server, corpus_bugs):
    case = json.loads((corpus_bugs / "bug06_mllp_split_chunks.json").read_text())
    chunks = [bytes.fromhex(h) for h in case["chunks_hex"]]
    received: list[bytes] = []

    def handler(event, peer):
        received.append(event.payload)
        return b"MSH|^~\\&|RIS|RAD|TESTHIS|WARD1|20240310080001||ACK^A08|A1|P|2.5\rMSA|AA|B06-1\r"

    server = make_server(handler)
    with MLLPClient(HOST, server.port, timeout=5) as client:
        for chunk in chunks:
            client.send_raw(chunk)
            time.sleep(0.02)
        reply = client.receive()
    assert received == [b"".join(chunks)[1:-2]]
    assert reply.split(b"\r")[1].split(b"|")[1:3] == [b"AA", b"B06-1"]


@pytest.mark.corpus
def test_bug08_70kb_order_received_completely_in_1kb_writes(make_server, corpus_bugs):
    message = (corpus_bugs / "bug08_orm_with_70kb_of_notes.hl7").read_bytes()
    received: list[bytes] = []
    server = make_server(lambda event, peer: received.append(event.payload) or b"ACK")
    data = frame(message)
    with MLLPClient(HOST, server.port, timeout=10) as client:
        for i in range(0, len(data), 1024):
            client.send_raw(data[i:i + 1024])
        assert client.receive() == b"ACK"
        assert client.send(message) == b"ACK"
    assert received == [message, message]


def test_a_frame_with_several_ordering_keys_is_ordered_against_each(make_server):
    """ordering_key may give several keys (an A40 names the survivor and the merged patient): the frame waits
    for the earlier frames of every key, and later frames of any of its keys wait for it; other keys do not."""
    release = threading.Event()
    started: list[bytes] = []
    finished: list[bytes] = []

    def handler(event, peer):
        started.append(event.payload)
        if event.payload == b"A-FIRST":
            release.wait(10)
        finished.append(event.payload)
        return echo(event, peer)

    keys = {b"A-FIRST": "a", b"MERGE-AB": ("a", "b"), b"B-LATER": "b", b"C-OTHER": "c"}
    server = make_server(handler, workers=8, ordering_key=lambda event: keys[event.payload])
    clients = [MLLPClient(HOST, server.port, timeout=10) for _ in range(4)]
    try:
        clients[0].send_raw(frame(b"A-FIRST"))
        assert wait_until(lambda: started == [b"A-FIRST"])
        clients[1].send_raw(frame(b"MERGE-AB"))
        assert wait_until(lambda: server.stats.frames == 2)
        clients[2].send_raw(frame(b"B-LATER"))
        assert wait_until(lambda: server.stats.frames == 3)
        assert clients[3].send(b"C-OTHER") == b"ACK:C-OTHER"   # no key in common: not held up
        time.sleep(0.2)  # give a wrongly ordered server the chance to run the merge or the later b
        assert started == [b"A-FIRST", b"C-OTHER"]
        release.set()
        assert [clients[i].receive() for i in range(3)] == [b"ACK:A-FIRST", b"ACK:MERGE-AB", b"ACK:B-LATER"]
        assert finished == [b"C-OTHER", b"A-FIRST", b"MERGE-AB", b"B-LATER"]
        assert wait_until(lambda: server._key_tails == {})   # nothing left behind once every frame is done
    finally:
        release.set()
        for client in clients:
            client.close()
