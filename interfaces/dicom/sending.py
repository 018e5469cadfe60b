"""Shortcuts into pynetdicom's send path for C-FIND answers (the worklist's and the archive's), installed once by
:func:`install` when the AE is built.

A C-FIND answer is two things on the wire: the C-FIND-RSP command set and the Identifier. pynetdicom builds and
encodes both with pydicom for every answer: the Identifier with ``pynetdicom.dsutils.encode`` (pydicom's
``write_dataset``, element by element), the command set as a new pydicom Dataset encoded twice (once to measure
its group length, once to send it). For a broad worklist query that was three quarters of the engine's CPU time,
about 0.5 ms per answer (docs/performance.md). Two shortcuts, each falling back to pynetdicom's own code for
anything it does not recognise:

- an :class:`interfaces.dicom.responses.EncodedAnswer` carries the bytes of its Identifier for one transfer
  syntax; the ``encode`` that pynetdicom's service classes call returns those bytes (deflated for Deflated
  Explicit VR Little Endian) when the syntax is that one, and encodes anything else as before;
- the message pynetdicom builds for a C-FIND-RSP with nothing but the SOP Class, message id, status and the
  presence of an Identifier (Pending, Success, Cancel: every answer but the failures, which carry an Error
  Comment) writes its command set (PS3.7 9.3.2.2, Implicit VR Little Endian, PS3.7 6.3.1) from a small cache of
  byte strings; its ``command_set`` Dataset is decoded from those bytes only if someone looks at it.

Both hooks check that pynetdicom still has the names they wrap and do nothing otherwise: the answers are then
the same, only slower.
"""

from __future__ import annotations

import functools
import logging
import struct
import zlib
from io import BytesIO

from pydicom.dataset import Dataset

from interfaces.dicom.responses import EncodedAnswer

log = logging.getLogger(__name__)

_PLAIN_STATUSES = frozenset({0x0000, 0xFF00, 0xFF01, 0xFE00})


def install() -> None:
    """Install both shortcuts (idempotent)."""
    _send_encoded_identifiers()
    _write_plain_find_responses()


# Identifiers -----------------------------------------------------------------------------------------------
def _send_encoded_identifiers() -> None:
    from pynetdicom import service_class

    original = getattr(service_class, "encode", None)
    if original is None or getattr(original, "sends_encoded_answers", False):
        return

    def encode(ds, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False):
        encoded = ds.encoded if isinstance(ds, EncodedAnswer) else None
        if encoded is None or encoded[:2] != (is_implicit_vr, is_little_endian):
            return original(ds, is_implicit_vr, is_little_endian, deflated)
        if not deflated:
            return encoded[2]
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        return compressor.compress(encoded[2]) + compressor.flush()

    encode.sends_encoded_answers = True
    service_class.encode = encode


# Command sets ----------------------------------------------------------------------------------------------
def _write_plain_find_responses() -> None:
    try:
        from pynetdicom import dimse, dimse_messages
        from pynetdicom.dimse_primitives import C_FIND
        from pynetdicom.pdu_primitives import P_DATA
        from pynetdicom.dsutils import decode
    except ImportError:                                        # pragma: no cover - another pynetdicom
        return
    table = getattr(dimse, "_RSP_TO_MESSAGE", None)
    base = getattr(dimse_messages, "C_FIND_RSP", None)
    if table is None or base is None or table.get(C_FIND) is not base:
        return                                                 # already installed, or not the layout we know

    class C_FIND_RSP(base):                                    # noqa: N801 - pynetdicom looks messages up by name
        """A C-FIND-RSP message whose plain command set is written from cached bytes (see the module)."""

        def __init__(self) -> None:
            self.context_id = None
            self.encoded_command_set = BytesIO()
            self.data_set = BytesIO()
            self._data_set_path = None
            self._data_set_file = None
            self._command = None                              # the command set's bytes on the fast path
            self._command_set = None

        @property
        def command_set(self) -> Dataset:
            if self._command_set is None:
                if self._command is not None:
                    self._command_set = decode(BytesIO(self._command), True, True)
                else:
                    self._command_set = _base_message().command_set
            return self._command_set

        @command_set.setter
        def command_set(self, value: Dataset) -> None:
            self._command_set = value

        def primitive_to_message(self, primitive) -> None:
            status = getattr(primitive, "Status", None)
            plain = (status in _PLAIN_STATUSES and primitive.AffectedSOPClassUID
                     and primitive.MessageIDBeingRespondedTo is not None
                     and getattr(primitive, "OffendingElement", None) is None
                     and getattr(primitive, "ErrorComment", None) is None)
            if not plain:
                full = _base_message()
                full.primitive_to_message(primitive)
                self._command, self._command_set, self.data_set = None, full.command_set, full.data_set
                return
            identifier = primitive.Identifier
            self.data_set = identifier if identifier is not None else BytesIO()
            present = bool(identifier is not None and identifier.getvalue())
            self._command = _find_rsp_command(str(primitive.AffectedSOPClassUID),
                                              int(primitive.MessageIDBeingRespondedTo), int(status), present)
            self._command_set = None

        def encode_msg(self, context_id: int, max_pdu_length: int):
            if self._command is None:
                yield from super().encode_msg(context_id, max_pdu_length)
                return
            self.context_id = context_id
            yield from _fragments(P_DATA, context_id, self._command, max_pdu_length, 0x01)
            data = self.data_set.getvalue() if self.data_set is not None else b""
            if data:
                yield from _fragments(P_DATA, context_id, data, max_pdu_length, 0x00)

    def _base_message():
        return base()

    table[C_FIND] = C_FIND_RSP


_ELEMENT = struct.Struct("<HHL")


def _element(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


@functools.lru_cache(maxsize=256)
def _find_rsp_command(sop_class: str, message_id: int, status: int, identifier: bool) -> bytes:
    """The C-FIND-RSP command set (PS3.7 Table 9.3-2) in Implicit VR Little Endian, as pynetdicom writes it."""
    uid = sop_class.encode("ascii")
    if len(uid) % 2:
        uid += b"\0"
    us = struct.Struct("<H").pack
    body = b"".join((
        _element(0x00000002, uid),                           # Affected SOP Class UID
        _element(0x00000100, us(0x8020)),                    # Command Field: C-FIND-RSP
        _element(0x00000120, us(message_id)),                # Message ID Being Responded To
        _element(0x00000800, us(0x0001 if identifier else 0x0101)),   # Command Data Set Type
        _element(0x00000900, us(status)),                    # Status
    ))
    return _element(0x00000000, struct.pack("<L", len(body))) + body


def _fragments(p_data, context_id: int, data: bytes, max_pdu_length: int, kind: int):
    """P-DATA primitives of one command set (kind 0x01) or data set (0x00) (PS3.8 E.2: the message control
    header's bit 1 marks the last fragment)."""
    size = len(data) if max_pdu_length == 0 else max_pdu_length - 6
    for start in range(0, len(data), size):
        last = start + size >= len(data)
        pdata = p_data()
        pdata.presentation_data_value_list.append((context_id, bytes([kind | (0x02 if last else 0)])
                                                   + data[start:start + size]))
        yield pdata
