"""MLLP framing - the byte layer of the MLLP interface (no sockets, no HL7 parsing).

HL7 v2.5.1 Appendix C (MLLP Release 2, "Minimal Lower Layer Protocol"), block format::

    <VT 0x0B> message bytes <FS 0x1C> <CR 0x0D>

`frame` wraps a payload; `FrameReader` turns an arbitrarily split byte stream back into frames. The reader is
deliberately lenient towards what real senders put on the wire:

- A frame may be split over any number of reads, and one read may hold several frames (BUG-06: buffer until the
  trailer, never assume one read = one message; BUG-08: messages longer than any read buffer).
- Bytes outside a frame (NUL, whitespace, LF, stray FS/CR, stray text) are skipped and counted in ``discarded``.
- A VT inside a frame, before its trailer, means the previous frame was never terminated: the unterminated part is
  dropped (counted in ``discarded``) and the VT starts a new frame. A message never contains VT, so this loses only
  what could never have been delivered.
- FS ends the frame whatever follows it. A CR right after the FS is part of the trailer and consumed; anything else
  after the FS is treated as outside a frame (a VT there starts the next frame). Some senders omit the CR; the frame
  is emitted as soon as the FS arrives - even when FS is the last byte of a read - and a CR arriving at the start of
  the next read is still consumed as the rest of that trailer (not counted as discarded). Waiting for the byte after
  the FS would change nothing in the outcome and would deadlock a sender that omits the CR and waits for its ACK.
- With ``max_size``, a frame whose body grows beyond it stops being buffered: only its first 64 KiB are kept (enough
  for the caller to read MSH and build a reject), the rest is drained up to the trailer, and one event with
  ``oversize=True`` and the total body size is emitted. The stream stays usable for the next frame.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["START_BLOCK", "END_BLOCK", "CARRIAGE_RETURN", "OVERSIZE_PAYLOAD", "FrameEvent", "FrameReader", "frame"]

START_BLOCK = b"\x0b"  # VT
END_BLOCK = b"\x1c"  # FS
CARRIAGE_RETURN = b"\x0d"  # CR
OVERSIZE_PAYLOAD = 64 * 1024  # bytes of an oversize frame kept as its payload

_VT, _FS, _CR = START_BLOCK[0], END_BLOCK[0], CARRIAGE_RETURN[0]


def frame(payload: bytes) -> bytes:
    """Wrap one message in an MLLP block: VT + payload + FS CR."""
    return START_BLOCK + bytes(payload) + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True, slots=True)
class FrameEvent:
    """One received frame.

    ``payload`` is the message bytes (for an oversize frame: its first 64 KiB only); ``size`` is the total size of
    the message body in bytes; ``oversize`` is True when the body exceeded the reader's ``max_size``.
    """

    payload: bytes
    oversize: bool = False
    size: int = 0


class FrameReader:
    """Incremental MLLP deframer: ``feed`` the bytes of each read, get the frames completed by it.

    One reader per connection; not thread-safe. Scanning uses ``bytearray.find``, so each byte is looked at a bounded
    number of times in C, however the stream is split.
    """

    def __init__(self, max_size: int | None = None) -> None:
        if max_size is not None and max_size < 1:
            raise ValueError("max_size must be positive or None")
        self.max_size = max_size
        self.discarded = 0  # bytes of no emitted frame: junk between frames, unterminated frames (VT + body)
        self._buf = bytearray()  # outside a frame: unscanned bytes; inside: the body (oversize: its undrained tail)
        self._in_frame = False
        self._scanned = 0  # inside a frame: _buf[:_scanned] is known to hold neither VT nor FS
        self._after_fs = False  # the last byte consumed was an FS: a CR next completes its trailer
        self._head: bytearray | None = None  # oversize: the first OVERSIZE_PAYLOAD bytes of the body
        self._drained = 0  # oversize: body bytes seen and dropped

    @property
    def pending(self) -> int:
        """Bytes of a started but not yet terminated frame (0 when between frames)."""
        return self._drained + len(self._buf) if self._in_frame else 0

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Add the bytes of one read; return the frames it completed, in order."""
        buf = self._buf
        buf += data
        events: list[FrameEvent] = []
        while buf:
            if not self._in_frame:
                if self._after_fs:
                    self._after_fs = False
                    if buf[0] == _CR:
                        del buf[:1]
                        continue
                start = buf.find(_VT)
                if start < 0:
                    self.discarded += len(buf)
                    buf.clear()
                    break
                self.discarded += start
                del buf[: start + 1]
                self._in_frame, self._scanned = True, 0
                continue
            end = buf.find(_FS, self._scanned)
            restart = buf.find(_VT, self._scanned, len(buf) if end < 0 else end)
            if restart >= 0:  # a new start block before any trailer: the open frame was never terminated
                self.discarded += 1 + self._drained + restart  # its VT and its body
                del buf[: restart + 1]
                self._head, self._drained, self._scanned = None, 0, 0
                continue
            if end < 0:
                self._scanned = len(buf)
                self._limit_body()
                break
            events.append(self._event(end))
            del buf[: end + 1]
            self._in_frame, self._after_fs = False, True
            self._head, self._drained, self._scanned = None, 0, 0
        return events

    def _limit_body(self) -> None:
        """Inside a frame, no trailer yet: once the body exceeds max_size, keep its head and drop the rest."""
        if self._head is None:
            if self.max_size is None or len(self._buf) <= self.max_size:
                return
            self._head = bytearray()
        self._keep_head(len(self._buf))
        self._drained += len(self._buf)
        self._buf.clear()
        self._scanned = 0

    def _keep_head(self, n: int) -> None:
        missing = OVERSIZE_PAYLOAD - len(self._head)
        if missing > 0:
            self._head += self._buf[: min(n, missing)]

    def _event(self, end: int) -> FrameEvent:
        """The frame body ends just before the FS at _buf[end]."""
        size = self._drained + end
        if self._head is None and (self.max_size is None or size <= self.max_size):
            return FrameEvent(bytes(self._buf[:end]), size=size)
        if self._head is None:
            self._head = bytearray()
        self._keep_head(end)
        return FrameEvent(bytes(self._head), oversize=True, size=size)
