"""A small, exact HL7 v2 ER7 ("pipe and hat") tokenizer for the hot path.

HL7 v2.5.1 chapter 2, 2.5 (message construction rules, delimiters):

- the delimiters are read from MSH-1 (field separator) and MSH-2 (component, repetition, escape, subcomponent
  and, from v2.7, truncation characters), never assumed;
- segments end with CR; senders also use CRLF and bare LF, so: when the text holds a CR, CR ends segments and
  an LF right after a CR is dropped (an LF elsewhere is data); without any CR, LF ends segments;
- empty segments (blank lines, trailing terminators, a stray MLLP 0x1C byte) produce nothing.

Numbering is 1-based as in the standard and HAPI's Terser: ``PID-3`` is PID-3[1].1.1. In MSH (and the batch
headers FHS/BHS, 2.10) field 1 is the field separator itself and field 2 the encoding characters, which are
returned verbatim and never split or unescaped.

Segments are split into fields at :func:`parse`; repetitions, components and subcomponents are split only when a
value is asked for, and escape sequences (2.7) are decoded only in the leaf that is returned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from interfaces.hl7.charsets import CharsetError, codec_for
from interfaces.hl7.escape import unescape

__all__ = [
    "HL7_NULL",
    "STANDARD_DELIMITERS",
    "Delimiters",
    "HL7ParseError",
    "Message",
    "Segment",
    "parse",
    "split_messages",
]

log = logging.getLogger(__name__)

HL7_NULL = '""'
"""The HL7 explicit null ('""': delete the value, 2.5), returned as these two characters; the caller decides."""

_LEADING_JUNK = " \t\r\n\x00\x0b\x1c\ufeff"
_TRAILING_JUNK = "\r\n\x00\x0b\x1c"
_HEADER_SEGMENTS = frozenset({"MSH", "BHS", "FHS"})
_MAX_ENCODING_CHARACTERS = 5  # component, repetition, escape, subcomponent, truncation (v2.7)


class HL7ParseError(ValueError):
    """The text is not an HL7 v2 message we can tokenize. ``location`` names the place, e.g. 'MSH-2'."""

    def __init__(self, message: str, location: str | None = None) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.reason = message
        self.location = location


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The message delimiters (HL7 v2.5.1 2.5, MSH-1/MSH-2); ``subcomponent``/``truncation`` '' if undeclared."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it would be written."""
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


STANDARD_DELIMITERS = Delimiters()


def _leaf(raw: str, delims: Delimiters, rep: int, comp: int, sub: int) -> str:
    """The raw (still escaped) rep/comp/sub of one field; '' when absent."""
    if delims.repetition in raw:
        parts = raw.split(delims.repetition, rep)
        if len(parts) < rep:
            return ""
        raw = parts[rep - 1]
    elif rep != 1:
        return ""
    if delims.component in raw:
        parts = raw.split(delims.component, comp)
        if len(parts) < comp:
            return ""
        raw = parts[comp - 1]
    elif comp != 1:
        return ""
    if delims.subcomponent and delims.subcomponent in raw:
        parts = raw.split(delims.subcomponent, sub)
        if len(parts) < sub:
            return ""
        raw = parts[sub - 1]
    elif sub != 1:
        return ""
    return raw


def _check_position(*numbers: int) -> None:
    for number in numbers:
        if number < 1:
            raise ValueError(f"HL7 positions are 1-based, got {number}")


class Segment:
    """One segment. ``fields[0]`` is the segment name; ``fields[n]`` is field n, exactly as sent.

    For MSH/BHS/FHS ``fields[1]`` is the field separator and ``fields[2]`` the encoding characters.
    """

    __slots__ = ("name", "fields", "delimiters", "codec", "_is_header")

    def __init__(self, name: str, fields: list[str], delimiters: Delimiters, codec: str) -> None:
        self.name = name
        self.fields = fields
        self.delimiters = delimiters
        self.codec = codec
        self._is_header = name in _HEADER_SEGMENTS

    @property
    def field_count(self) -> int:
        """Number of the last field present (trailing empty fields included, as sent)."""
        return len(self.fields) - 1

    def raw(self, field: int, rep: int | None = None) -> str:
        """Field ``field`` (or its repetition ``rep``) exactly as sent: delimiters and escapes intact."""
        _check_position(field)
        fields = self.fields
        if field >= len(fields):
            return ""
        raw = fields[field]
        if rep is None or (self._is_header and field <= 2):
            return raw if rep in (None, 1) else ""
        _check_position(rep)
        parts = raw.split(self.delimiters.repetition, rep)
        return parts[rep - 1] if len(parts) >= rep else ""

    def value(self, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
        """The unescaped leaf value ``field[rep].comp.sub`` (HAPI Terser semantics); '' when absent."""
        fields = self.fields
        if field < 1 or rep < 1 or comp < 1 or sub < 1:
            _check_position(field, rep, comp, sub)
        if field >= len(fields):
            return ""
        raw = fields[field]
        if not raw:
            return ""
        if self._is_header and field <= 2:
            return raw if rep == comp == sub == 1 else ""
        delims = self.delimiters
        leaf = _leaf(raw, delims, rep, comp, sub)
        if delims.escape in leaf:
            return unescape(leaf, delims, self.codec)
        return leaf

    def values(self, field: int, comp: int = 1, sub: int = 1) -> list[str]:
        """The unescaped leaf ``comp.sub`` of every repetition of ``field``; [] when the field is empty."""
        _check_position(field, comp, sub)
        raw = self.raw(field)
        if not raw:
            return []
        if self._is_header and field <= 2:
            return [raw] if comp == sub == 1 else [""]
        delims = self.delimiters
        leaves = [_leaf(repetition, delims, 1, comp, sub) for repetition in raw.split(delims.repetition)]
        return [unescape(leaf, delims, self.codec) if delims.escape in leaf else leaf for leaf in leaves]

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, {len(self.fields) - 1} fields)"


class Message:
    """A tokenized HL7 v2 message: its delimiters and segments, with HAPI-Terser-like accessors."""

    __slots__ = ("delimiters", "segments", "codec", "_index")

    def __init__(self, delimiters: Delimiters, segments: list[Segment], codec: str) -> None:
        self.delimiters = delimiters
        self.segments = segments
        self.codec = codec  # decodes \Xhh..\ escapes (2.7): from MSH-18 unless given to parse()
        self._index: dict[str, list[Segment]] | None = None

    def _by_name(self) -> dict[str, list[Segment]]:
        if self._index is None:
            index: dict[str, list[Segment]] = {}
            for segment in self.segments:
                index.setdefault(segment.name, []).append(segment)
            self._index = index
        return self._index

    def segment_names(self) -> list[str]:
        return [segment.name for segment in self.segments]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The ``occurrence``-th segment called ``name`` (1-based), or None."""
        _check_position(occurrence)
        found = self._by_name().get(name)
        if found is None or len(found) < occurrence:
            return None
        return found[occurrence - 1]

    def all(self, name: str) -> list[Segment]:
        """Every segment called ``name``, in message order."""
        return list(self._by_name().get(name, ()))

    def value(self, seg: str, field: int, rep: int = 1, comp: int = 1, sub: int = 1, occurrence: int = 1) -> str:
        """Unescaped leaf value of ``seg[occurrence]-field[rep].comp.sub``; '' when absent."""
        segment = self.segment(seg, occurrence)
        return segment.value(field, rep, comp, sub) if segment is not None else ""

    def values(self, seg: str, field: int, comp: int = 1, sub: int = 1, occurrence: int = 1) -> list[str]:
        """The leaf ``comp.sub`` in every repetition of the field (e.g. IPC-9 station AE titles)."""
        segment = self.segment(seg, occurrence)
        return segment.values(field, comp, sub) if segment is not None else []

    def raw(self, seg: str, field: int, rep: int | None = None, occurrence: int = 1) -> str:
        """The field (or one repetition) exactly as sent, delimiters and escapes intact."""
        segment = self.segment(seg, occurrence)
        return segment.raw(field, rep) if segment is not None else ""

    def _msh(self, field: int, comp: int = 1) -> str:
        return self.segments[0].value(field, 1, comp).strip()

    @property
    def message_code(self) -> str:
        """MSH-9.1, trimmed."""
        return self._msh(9, 1)

    @property
    def trigger_event(self) -> str:
        """MSH-9.2, trimmed."""
        return self._msh(9, 2)

    @property
    def structure(self) -> str:
        """MSH-9.3 (message structure), trimmed; '' when the sender left it out."""
        return self._msh(9, 3)

    @property
    def control_id(self) -> str:
        """MSH-10, trimmed."""
        return self._msh(10)

    @property
    def processing_id(self) -> str:
        """MSH-11.1, trimmed."""
        return self._msh(11)

    @property
    def version(self) -> str:
        """MSH-12.1, trimmed ('2.5' from '2.5^FRA^2.11')."""
        return self._msh(12)

    @property
    def sending_application(self) -> str:
        """MSH-3.1, trimmed."""
        return self._msh(3)

    @property
    def sending_facility(self) -> str:
        """MSH-4.1, trimmed."""
        return self._msh(4)

    @property
    def charset_field(self) -> str:
        """MSH-18 exactly as sent."""
        return self.segments[0].raw(18)

    def __repr__(self) -> str:
        return f"Message({'|'.join(self.segment_names())})"


def _usable_delimiter(char: str) -> bool:
    """A delimiter must be printable ASCII punctuation (not a letter, digit, space or control character)."""
    return char.isascii() and char.isprintable() and not char.isalnum() and not char.isspace()


def _read_delimiters(text: str) -> Delimiters:
    """Delimiters from MSH-1 and MSH-2 of a text that starts with 'MSH' (HL7 v2.5.1 2.5, 2.15.9 MSH-1/MSH-2)."""
    if len(text) < 4 or text[3] in "\r\n":
        raise HL7ParseError("MSH-1 (field separator) is missing", "MSH-1")
    field_sep = text[3]
    if not _usable_delimiter(field_sep):
        raise HL7ParseError(f"MSH-1 field separator {field_sep!r} is not a usable delimiter", "MSH-1")
    end = 4
    limit = min(len(text), 4 + _MAX_ENCODING_CHARACTERS + 1)
    while end < limit and text[end] not in (field_sep, "\r", "\n"):
        end += 1
    encoding = text[4:end]
    if "\ufffd" in encoding:
        raise HL7ParseError(
            f"MSH-2 {encoding!r} holds U+FFFD: an encoding character was mangled (wrong character set?)", "MSH-2"
        )
    if len(encoding) < 3:
        raise HL7ParseError(f"MSH-2 {encoding!r} needs at least 3 encoding characters", "MSH-2")
    if len(encoding) > _MAX_ENCODING_CHARACTERS:
        raise HL7ParseError(f"MSH-2 {encoding!r}... is longer than {_MAX_ENCODING_CHARACTERS} characters", "MSH-2")
    for char in encoding:
        if not _usable_delimiter(char):
            raise HL7ParseError(f"MSH-2 {encoding!r}: {char!r} is not a usable delimiter", "MSH-2")
    if len(set(field_sep + encoding)) != len(encoding) + 1:
        raise HL7ParseError(f"MSH-1/MSH-2 {field_sep + encoding!r} repeat a delimiter character", "MSH-2")
    return Delimiters(field_sep, encoding[0], encoding[1], encoding[2], encoding[3:4], encoding[4:5])


def _segment_texts(text: str) -> list[str]:
    """Split on segment terminators (CR, CRLF, or LF when there is no CR at all); blank ones are dropped."""
    if "\r" in text:
        lines = text.split("\r")
        if "\n" in text:  # CRLF: the LF right after each CR belongs to the terminator
            lines = [line[1:] if line[:1] == "\n" else line for line in lines]
    else:
        lines = text.split("\n")
    return [line for line in lines if line and (line[0] not in _LEADING_JUNK or line.strip(_LEADING_JUNK))]


def _hex_codec(msh18: str, repetition: str) -> str:
    """Codec for \\Xhh..\\ bytes: the first non-ASCII set named in MSH-18; ASCII when none (or unknown)."""
    for name in msh18.split(repetition):
        try:
            codec = codec_for(name)
        except CharsetError:
            continue
        if codec != "ascii":
            return codec
    return "ascii"


def parse(text: str, *, codec: str | None = None) -> Message:
    """Tokenize one HL7 v2 message (HL7 v2.5.1 2.5).

    Leading whitespace, NUL and MLLP framing bytes (0x0B, 0x1C) are ignored. ``codec`` decodes ``\\Xhh..\\``
    escapes; by default it is derived from MSH-18 (ASCII when MSH-18 is empty; undecodable bytes then fall back
    to UTF-8 and Latin-1, see :func:`interfaces.hl7.escape.unescape`).

    Raises :class:`HL7ParseError` when the text does not start with MSH or MSH-1/MSH-2 are unusable.
    """
    text = text.lstrip(_LEADING_JUNK)
    if not text.startswith("MSH"):
        raise HL7ParseError("the message does not start with an MSH segment", "MSH")
    delims = _read_delimiters(text)
    field_sep = delims.field
    lines = _segment_texts(text.rstrip(_TRAILING_JUNK))
    split_fields = [line.split(field_sep) for line in lines]
    for fields in split_fields:
        if fields[0] in _HEADER_SEGMENTS:
            fields.insert(1, field_sep)
    header = split_fields[0]
    if codec is None:
        codec = _hex_codec(header[18], delims.repetition) if len(header) > 18 and header[18] else "ascii"
    segments = [Segment(fields[0], fields, delims, codec) for fields in split_fields]
    return Message(delims, segments, codec)


def split_messages(text: str) -> list[str]:
    """Split a batch or a plain concatenation of messages into single messages (HL7 v2.5.1 2.10, batch protocol).

    FHS/BHS headers and BTS/FTS trailers are removed (missing trailers are tolerated and logged); each MSH
    starts a new message. Lines before the first MSH that are not batch headers (e.g. comments in a file) are
    dropped with a log warning. Each message is returned with CR segment terminators (and a final CR).
    """
    text = text.lstrip(_LEADING_JUNK).rstrip(_TRAILING_JUNK)
    messages: list[list[str]] = []
    current: list[str] | None = None
    seen: set[str] = set()
    dropped = 0
    for line in _segment_texts(text):
        name = line[:3]
        if name == "MSH":
            current = [line]
            messages.append(current)
        elif name in ("FHS", "BHS", "BTS", "FTS"):
            seen.add(name)
            current = None
        elif current is None:
            dropped += 1
        else:
            current.append(line)
    if dropped:
        log.warning("split_messages: dropped %d line(s) outside any MSH message", dropped)
    for header, trailer in (("FHS", "FTS"), ("BHS", "BTS")):
        if header in seen and trailer not in seen:
            log.warning("split_messages: %s without %s trailer", header, trailer)
    return ["\r".join(segments) + "\r" for segments in messages]
