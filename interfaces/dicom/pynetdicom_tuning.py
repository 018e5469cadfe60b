"""Fixes to pynetdicom's hot path of receiving: read a PDU in one go, and wake the association's polling loops
when there is work instead of after their next 1 ms sleep (measured on C-STORE, docs/performance.md).

Reading (``AssociationSocket.recv``): pynetdicom 3.0 reads a PDU in 4 kB ``recv`` calls, each appended to a
bytearray: a 512 kB image costs 128 system calls, each releasing and taking back the GIL. :func:`install` gives it
a reader that receives straight into one buffer of the PDU's size (``recv_into``, as large reads as the socket
gives); same result, same blocking, same "connection broken: return what was read".

The loops: pynetdicom runs two threads per association, each a polling loop (``Association._run_reactor`` and
``DULServiceProvider.run_reactor``): the association's loop sleeps 1 ms before it looks for a complete DIMSE
message; the DUL's loop, after a turn without events, sleeps 1 ms before it looks again at the socket and at the
primitives to send. One C-STORE crosses these sleeps three times (request complete -> handler; response ->
socket; next request -> reader). This module replaces those two sleeps, and only those, by waits that end early:

- the association's 1 ms sleep waits on its DIMSE message queue (``dimse.msg_queue``), so a complete request is
  served at once;
- the DUL's idle sleep waits on its socket and on a wake-up socket pair written whenever a primitive is queued
  for sending (``to_provider_queue.put``), so an incoming PDU is read, and a response sent, at once.

Each wait still ends after the time pynetdicom asked for, so every check its loops make (release, abort, ARTIM
and idle timers) happens at least as often as before; with TLS, bytes already decrypted are not seen by
``select`` and the wait simply lasts the original 1 ms. pynetdicom's standard event handlers, which format a
report of every PDU and DIMSE message even when its logger (at WARNING unless RIS_LOG_LEVEL=DEBUG,
config.logging) drops them, are switched off in that case. The waits are set up for the associations of our own
server (EVT_CONN_OPEN, :func:`attach`; EVT_CONN_CLOSE, :func:`detach`). The fixes are installed only for the
pynetdicom version they were written against (:data:`SUPPORTED`); with any other version pynetdicom runs as
shipped.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
import types

import pynetdicom
from pynetdicom import _config
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import transport as _transport

log = logging.getLogger(__name__)

SUPPORTED = ("3.0.4",)
_POLL = 0.001            # the sleep of both loops in pynetdicom 3.0 (_run_reactor; DUL _run_loop_delay)
_WAIT = "_ris_wait"      # attribute of a loop's thread object: how it waits instead of sleeping


def _sleep(seconds: float) -> None:
    """``time.sleep`` for the two pynetdicom modules: their 1 ms poll on a thread we attached waits for work."""
    wait = getattr(threading.current_thread(), _WAIT, None) if seconds == _POLL else None
    if wait is None:
        time.sleep(seconds)
    else:
        wait(seconds)


def _clock() -> types.ModuleType:
    clock = types.ModuleType("ris_pynetdicom_clock")
    clock.__dict__.update({name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    clock.sleep = _sleep
    return clock


def _recv(self, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv``: ``nr_bytes`` from the socket, blocking until all are read; on a broken
    connection, what was read so far."""
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    done = 0
    while done < nr_bytes:
        count = self.socket.recv_into(view[done:], nr_bytes - done)
        if not count:
            del view
            return buffer[:done]
        done += count
    del view
    return buffer


_installed = False
_lock = threading.Lock()


def install() -> bool:
    """Install the fixes (once); False for a pynetdicom version they were not written against."""
    global _installed
    with _lock:
        if _installed:
            return True
        if pynetdicom.__version__ not in SUPPORTED:
            log.info("pynetdicom %s: association loops keep their 1 ms polling", pynetdicom.__version__)
            return False
        clock = _clock()
        _association.time = clock
        _dul.time = clock
        _transport.AssociationSocket.recv = _recv
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
            # its standard handlers format every PDU and DIMSE message even when the logger drops them
            _config.LOG_HANDLER_LEVEL = "none"
        _installed = True
        return True


def attach(event) -> None:
    """EVT_CONN_OPEN: let this association's two loops wait for work."""
    if not _installed:
        return
    assoc = event.assoc
    try:
        dul = assoc.dul
        messages = assoc.dimse.msg_queue
        sock = dul.socket.socket
    except AttributeError:
        return
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    outgoing = dul.to_provider_queue
    original_put = outgoing.put

    def put(item, *args, **kwargs):
        original_put(item, *args, **kwargs)
        try:
            writer.send(b"\0")
        except OSError:          # full (the loop is awake anyway) or closed
            pass

    def wait_for_message(seconds: float) -> None:
        with messages.not_empty:
            if not len(messages.queue):
                messages.not_empty.wait(seconds)

    def wait_for_io(seconds: float) -> None:
        try:
            ready, _, _ = select.select([sock, reader], [], [], seconds)
        except (OSError, ValueError):     # the socket was closed meanwhile
            time.sleep(seconds)
            return
        if reader in ready:
            try:
                while reader.recv(4096):
                    pass
            except OSError:
                pass

    outgoing.put = put
    setattr(assoc, _WAIT, wait_for_message)
    setattr(dul, _WAIT, wait_for_io)
    assoc._ris_wake = (reader, writer)


def detach(event) -> None:
    """EVT_CONN_CLOSE: back to plain sleeps; close the wake-up pair."""
    assoc = event.assoc
    for thread in (assoc, getattr(assoc, "dul", None)):
        if thread is not None and hasattr(thread, _WAIT):
            delattr(thread, _WAIT)
    pair = getattr(assoc, "_ris_wake", None)
    if pair is not None:
        for end in pair:
            end.close()
        assoc._ris_wake = None
