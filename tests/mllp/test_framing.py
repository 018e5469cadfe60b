"""Unit tests of MLLP framing (HL7 v2.5.1 Appendix C): no sockets."""

from __future__ import annotations

import json

import pytest

from interfaces.mllp.framing import OVERSIZE_PAYLOAD, FrameEvent, FrameReader, frame

MSG = b"MSH|^~\\&|HIS|WARD1|RIS|RAD|20240310080000||ADT^A08|C-1|P|2.5\rPID|||P-1^^^HIS^MR||DOE^JANE\r"


def feed_all(reader: FrameReader, chunks) -> list[FrameEvent]:
    events: list[FrameEvent] = []
    for chunk in chunks:
        events += reader.feed(chunk)
    return events


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_frame_wraps_payload():
    assert frame(b"abc") == b"\x0babc\x1c\x0d"
    assert frame(b"") == b"\x0b\x1c\x0d"


def test_one_frame_one_event():
    reader = FrameReader()
    assert reader.feed(frame(MSG)) == [FrameEvent(MSG, size=len(MSG))]
    assert reader.discarded == 0 and reader.pending == 0


def test_split_at_every_byte_position():
    data = frame(MSG)
    for cut in range(len(data) + 1):
        reader = FrameReader()
        events = feed_all(reader, [data[:cut], data[cut:]])
        assert [e.payload for e in events] == [MSG], cut
        assert reader.discarded == 0, cut


def test_split_at_every_pair_of_positions():
    payload = b"MSH|^~\\&|A|B\rPID|1\r"
    data = frame(payload)
    for first in range(len(data) + 1):
        for second in range(first, len(data) + 1):
            reader = FrameReader()
            events = feed_all(reader, [data[:first], data[first:second], data[second:]])
            assert [e.payload for e in events] == [payload], (first, second)
            assert reader.discarded == 0


def test_one_byte_at_a_time():
    data = frame(MSG) * 3
    reader = FrameReader()
    events = feed_all(reader, [data[i:i + 1] for i in range(len(data))])
    assert [e.payload for e in events] == [MSG] * 3
    assert reader.discarded == 0


def test_several_frames_in_one_read():
    payloads = [b"MSH|1", b"MSH|22", b"", b"MSH|4444"]
    reader = FrameReader()
    events = reader.feed(b"".join(frame(p) for p in payloads))
    assert [e.payload for e in events] == payloads
    assert [e.size for e in events] == [len(p) for p in payloads]


def test_last_frame_of_a_read_incomplete():
    reader = FrameReader()
    data = frame(b"MSH|1") + frame(b"MSH|2")
    assert [e.payload for e in reader.feed(data[:-4])] == [b"MSH|1"]
    assert reader.pending == 3  # "MSH" of the second body
    assert [e.payload for e in reader.feed(data[-4:])] == [b"MSH|2"]


@pytest.mark.parametrize("junk", [b"\x00\x00", b" \t\r\n", b"\n", b"hello", b"\x1c\x0d", b"\x1c", b"\x0d\x0d\x1c"])
def test_junk_between_frames_is_skipped(junk):
    reader = FrameReader()
    events = reader.feed(junk + frame(b"MSH|1") + junk + frame(b"MSH|2") + junk)
    assert [e.payload for e in events] == [b"MSH|1", b"MSH|2"]
    assert reader.discarded == 3 * len(junk)  # each frame's own FS CR already ended it: a further CR is junk


def test_junk_then_frame_across_reads():
    reader = FrameReader()
    assert reader.feed(b"\x00garbage\r\n") == []
    assert reader.feed(b"more\x0bMSH") == []
    assert [e.payload for e in reader.feed(b"|1\x1c\r")] == [b"MSH|1"]
    assert reader.discarded == len(b"\x00garbage\r\nmore")


def test_fs_without_cr_is_accepted():
    reader = FrameReader()
    events = reader.feed(b"\x0bMSH|1\x1c\x0bMSH|2\x1cX\x0bMSH|3\x1c\x0d")
    assert [e.payload for e in events] == [b"MSH|1", b"MSH|2", b"MSH|3"]
    assert reader.discarded == 1  # the X


def test_fs_at_end_of_read_emits_at_once_and_takes_the_cr_of_the_next_read():
    reader = FrameReader()
    assert [e.payload for e in reader.feed(b"\x0bMSH|1\x1c")] == [b"MSH|1"]  # no deadlock on a CR-less sender
    assert reader.feed(b"\x0d") == []
    assert [e.payload for e in reader.feed(b"\x0bMSH|2\x1c")] == [b"MSH|2"]
    assert [e.payload for e in reader.feed(b"\x0bMSH|3\x1c\x0d")] == [b"MSH|3"]
    assert reader.discarded == 0


def test_unterminated_frame_followed_by_new_start():
    reader = FrameReader()
    events = reader.feed(b"\x0bMSH|lost" + frame(b"MSH|good"))
    assert [e.payload for e in events] == [b"MSH|good"]
    assert reader.discarded == len(b"\x0bMSH|lost")


def test_unterminated_frame_across_reads():
    reader = FrameReader()
    assert reader.feed(b"\x0bMSH|lost part one ") == []
    assert reader.feed(b"and two\x0bMSH|go") == []
    assert [e.payload for e in reader.feed(b"od\x1c\x0d")] == [b"MSH|good"]
    assert reader.discarded == len(b"\x0bMSH|lost part one and two")


def test_size_limit_is_inclusive():
    reader = FrameReader(max_size=10)
    assert reader.feed(frame(b"x" * 10)) == [FrameEvent(b"x" * 10, size=10)]
    [event] = reader.feed(frame(b"y" * 11))
    assert event.oversize and event.size == 11 and event.payload == b"y" * 11


def test_oversize_frame_then_normal_frame_in_one_read():
    reader = FrameReader(max_size=100)
    big = b"MSH|big|" + b"n" * 500
    events = reader.feed(frame(big) + frame(b"MSH|next"))
    assert events == [FrameEvent(big, oversize=True, size=len(big)), FrameEvent(b"MSH|next", size=8)]


def test_oversize_frame_is_drained_keeping_its_head():
    reader = FrameReader(max_size=100 * 1024)
    big = b"MSH|^~\\&|HIS|" + bytes(range(256)).replace(b"\x0b", b"-").replace(b"\x1c", b"-") * 1200
    events = feed_all(reader, chunked(frame(big) + frame(MSG), 1000))
    assert len(events) == 2
    assert events[0].oversize and events[0].size == len(big)
    assert events[0].payload == big[:OVERSIZE_PAYLOAD]
    assert events[1] == FrameEvent(MSG, size=len(MSG))
    assert reader.discarded == 0
    assert len(reader._buf) < 2000  # the drained body was not buffered


def test_pending_counts_drained_bytes():
    reader = FrameReader(max_size=10)
    reader.feed(b"\x0b" + b"a" * 50)
    reader.feed(b"b" * 50)
    assert reader.pending == 100
    [event] = reader.feed(b"\x1c\x0d")
    assert (event.oversize, event.size, event.payload, reader.pending) == (True, 100, b"a" * 50 + b"b" * 50, 0)


def test_unterminated_oversize_frame_followed_by_new_start():
    reader = FrameReader(max_size=10)
    reader.feed(b"\x0b" + b"a" * 100)
    assert [e.payload for e in reader.feed(b"b" * 5 + frame(b"MSH|ok"))] == [b"MSH|ok"]
    assert reader.discarded == 1 + 105


def test_73kb_message_in_1kb_chunks():
    message = b"MSH|^~\\&|HIS|W|RIS|R|20240310||ORM^O01|B08|P|2.3\r" + b"".join(
        b"NTE|%d||%s\r" % (i, b"note text " * 9) for i in range(740))
    assert len(message) > 73_000
    reader = FrameReader(max_size=16 * 1024 * 1024)
    events = feed_all(reader, chunked(frame(message), 1024))
    assert events == [FrameEvent(message, size=len(message))]


def test_large_frame_in_small_chunks_is_linear():
    message = b"MSH|" + b"z" * (4 * 1024 * 1024)
    reader = FrameReader(max_size=16 * 1024 * 1024)
    events = feed_all(reader, chunked(frame(message), 4096))
    assert [e.size for e in events] == [len(message)]


def test_rejects_nonpositive_max_size():
    with pytest.raises(ValueError):
        FrameReader(max_size=0)


@pytest.mark.corpus
def test_bug06_split_chunks_give_exactly_one_frame(corpus_bugs):
    case = json.loads((corpus_bugs / "bug06_mllp_split_chunks.json").read_text())
    chunks = [bytes.fromhex(h) for h in case["chunks_hex"]]
    reader = FrameReader()
    events = feed_all(reader, chunks)
    assert len(events) == case["expect"]["messages"] == 1
    assert events[0].payload == b"".join(chunks)[1:-2]
    assert events[0].payload.startswith(b"MSH|") and b"|B06-1|" in events[0].payload
    assert reader.discarded == 0


@pytest.mark.corpus
def test_bug08_70kb_order_in_small_chunks(corpus_bugs):
    message = (corpus_bugs / "bug08_orm_with_70kb_of_notes.hl7").read_bytes()
    assert len(message) > 70_000
    for size in (1, 512, 1024, 8192):
        reader = FrameReader(max_size=16 * 1024 * 1024)
        events = feed_all(reader, chunked(frame(message), size))
        assert events == [FrameEvent(message, size=len(message))], size
