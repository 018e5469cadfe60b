"""Shared fixtures of the MLLP tests: corpus location, servers that are always stopped, a bounded wait."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from interfaces.mllp import FrameEvent, MLLPServer

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS = REPO_ROOT.parent / "shared" / "corpus"


@pytest.fixture
def corpus_bugs() -> Path:
    bugs = CORPUS / "bugs"
    if not bugs.is_dir():
        pytest.skip(f"corpus not available at {bugs}")
    return bugs


def echo(event: FrameEvent, peer: str) -> bytes:
    """The test handler: a short reply derived from the message; AR-like for oversize frames."""
    if event.oversize:
        return b"AR:too large:%d:" % event.size + event.payload[:8]
    return b"ACK:" + event.payload[:20]


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@pytest.fixture
def make_server():
    """Start an MLLPServer on a free loopback port; every server made is stopped at the end of the test."""
    servers: list[MLLPServer] = []

    def make(handler=echo, **options) -> MLLPServer:
        server = MLLPServer(handler, "127.0.0.1", 0, **options)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop(timeout=2)
