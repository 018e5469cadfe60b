"""The HL7 intake behind the real MLLP server on loopback: order per patient across connections,
parallel patients, concurrent new patients, and a bounded mutation fuzz (every frame answered,
every message stored, nothing escapes)."""

from __future__ import annotations

import random
import threading
import time

from sqlalchemy import func, select

from app.db import unit_of_work
from app.models import InboundMessage, Patient
from app.queries.worklist import Text, WorklistQuery, find_worklist_items
from interfaces.mllp.client import MLLPClient
from interfaces.mllp.server import MLLPServer
from tests.corpus import CORPUS
from tests.test_intake import adt, orm


def serve(handler, intake):
    server = MLLPServer(handler, "127.0.0.1", 0, workers=8, ordering_key=intake.ordering_key)
    server.start()
    return server


def send_in_thread(port: int, payload: bytes, results: dict, name: str) -> threading.Thread:
    def run():
        with MLLPClient("127.0.0.1", port, timeout=30) as client:
            results[name] = (client.send(payload), time.monotonic())
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_one_patients_messages_keep_arrival_order_across_connections(intake, read_factory):
    def slow_first_order(event, peer):
        if b"|NW|" in event.payload:
            time.sleep(0.5)  # the change arriving meanwhile on another connection must wait for it
        return intake.handle_frame(event, peer)

    server = serve(slow_first_order, intake)
    try:
        results = {}
        first = send_in_thread(server.port, orm("NW", "O1"), results, "nw")
        time.sleep(0.15)
        second = send_in_thread(server.port, orm("XO", "O2", modality="MR", aets="MR_ROOM"), results, "xo")
        other = send_in_thread(server.port, adt("A04", "O3", pid="SOMEONE-ELSE"), results, "other")
        for t in (first, second, other):
            t.join(30)
    finally:
        server.stop()
    assert b"MSA|AA|O1" in results["nw"][0]
    assert b"MSA|AA|O2" in results["xo"][0]      # applied after the NW although sent on another connection
    assert results["other"][1] < results["nw"][1]  # another patient did not wait
    with unit_of_work(read_factory) as session:
        [item] = find_worklist_items(session, WorklistQuery(accession_number=Text("ACC-100")))
    assert item.modality == "MR"


def test_two_messages_for_a_new_patient_at_once_make_one_patient(intake, session_factory):
    server = serve(intake.handle_frame, intake)
    try:
        results = {}
        threads = [send_in_thread(server.port, adt("A04", f"N{i}", pid="NEW-1", name=f"N^{i}"), results, str(i))
                   for i in range(6)]
        for t in threads:
            t.join(30)
    finally:
        server.stop()
    assert all(b"MSA|AA|" in ack for ack, _ in results.values())
    with unit_of_work(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Patient)) == 1


def seeds() -> list[bytes]:
    own = [orm("NW", "F1"), orm("XO", "F2"), orm("CA", "F3"), adt("A08", "F4"),
           b"MSH|^~\\&|A|B|C|D|20260101||ADT^A40^ADT_A39|F5|P|2.5\rPID|||X^^^H\rMRG|Y^^^H\r"]
    corpus = sorted((CORPUS / "hl7").glob("*.hl7")) if CORPUS.is_dir() else []
    return own + [p.read_bytes() for p in corpus]


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        pos = rng.randrange(len(data) + 1) if data else 0
        if kind == 0 and data:                      # flip a byte
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:                             # insert a delimiter or a terminator
            data[pos:pos] = rng.choice([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b'""', b"\x0b", b"\x1c"])
        elif kind == 2:                             # truncate
            del data[pos:]
        elif kind == 3 and data:                    # duplicate a slice
            end = min(len(data), pos + rng.randrange(1, 200))
            data[pos:pos] = data[pos:end]
        elif kind == 4:                             # drop a slice
            del data[pos:pos + rng.randrange(1, 50)]
        else:                                       # non-ASCII bytes
            data[pos:pos] = bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 4)))
    return bytes(data)


def test_mutation_fuzz_direct(intake, session_factory):
    rng = random.Random(20261203)
    base = seeds()
    frames = [mutate(rng, rng.choice(base)) for _ in range(400)]
    for payload in frames:
        ack = intake.handle(payload, peer="fuzz")
        if ack is None:  # allowed only when the message's acknowledgment rules ask for no reply
            assert any(c in payload[:400] for c in (b"NE", b"ER", b"SU")), payload[:200]
        else:
            assert b"MSA" in ack, payload[:200]
    with unit_of_work(session_factory) as session:
        stored = session.scalar(select(func.count()).select_from(InboundMessage).where(
            InboundMessage.batch_fk.is_(None)))
        internal = [(m.id, m.error) for m in session.scalars(select(InboundMessage))
                    if m.error.startswith("internal error")]
    assert stored == len(frames)
    assert internal == []  # every failure is a named, expected one


def test_mutation_fuzz_over_mllp(intake, session_factory):
    rng = random.Random(7)
    base = seeds()
    server = serve(intake.handle_frame, intake)
    frames = [mutate(rng, rng.choice(base)) for _ in range(120)]
    frames = [f.replace(b"\x0b", b" ").replace(b"\x1c", b" ") or b" " for f in frames]  # keep framing intact
    frames = [f for f in frames if not any(c in f[:400] for c in (b"NE", b"ER", b"SU"))]  # each expects a reply
    try:
        with MLLPClient("127.0.0.1", server.port, timeout=30) as client:
            for payload in frames:
                assert b"MSA" in client.send(payload)
            assert b"MSA|AA|F1" in client.send(orm("NW", "F1", placer="AFTER", accession="AFTER"))  # still usable
    finally:
        server.stop()
    assert server.stats.handler_errors == 0
    with unit_of_work(session_factory) as session:
        stored = session.scalar(select(func.count()).select_from(InboundMessage).where(
            InboundMessage.batch_fk.is_(None)))
    assert stored == len(frames) + 1


def test_a_merge_is_ordered_against_the_messages_of_both_patients(intake, read_factory):
    """An A40 carries two keys (PID-3 and MRG-1): an order for the old identifier that arrives first on another
    connection is applied before the merge (so the merge moves it), and a change for the new identifier sent
    after the merge waits for it."""
    from tests.test_intake import a40

    def slow_order(event, peer):
        if b"|NW|" in event.payload:
            time.sleep(0.5)
        return intake.handle_frame(event, peer)

    server = serve(slow_order, intake)
    try:
        results = {}
        first = send_in_thread(server.port, orm("NW", "M1", pid="OLD-9"), results, "nw")
        time.sleep(0.15)
        merge = send_in_thread(server.port, a40("M2", "NEW-9", "OLD-9"), results, "a40")
        for t in (first, merge):
            t.join(30)
    finally:
        server.stop()
    assert b"MSA|AA|M1" in results["nw"][0] and b"MSA|AA|M2" in results["a40"][0]
    assert results["nw"][1] <= results["a40"][1]
    with unit_of_work(read_factory) as session:
        [item] = find_worklist_items(session, WorklistQuery(accession_number=Text("ACC-100")))
    assert item.patient_id == "NEW-9"   # the merge came second and moved the order
