"""Character-set handling for inbound HL7 v2 bytes and outbound acknowledgments.

HL7 v2.5.1 chapter 2, 2.15.9.18 (MSH-18 character set, values from HL7 table 0211): when MSH-18 is empty the
message is in the 7-bit ASCII default; a repeated MSH-18 (e.g. ``~ISO IR87``) lists the default set first and
the alternate set(s) switched to with ISO 2022 escape sequences after it (MSH-20 names the switching scheme).

The header itself is ASCII in every supported set (ISO-2022-JP included), so MSH-18 is read straight from the
bytes before anything is decoded; tokenizing happens on the decoded text only, because multi-byte sets can hold
delimiter bytes inside characters.

Senders often declare one thing and send another. :func:`decode_message` never fails silently: every time it
does not decode with the declared set it says so in ``Decoded.warnings``.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = ["CharsetError", "Decoded", "codec_for", "decode_message", "encode_text"]

MISMATCH_POLICIES = ("prefer-utf8", "declared", "strict")


class CharsetError(ValueError):
    """The bytes cannot be decoded under the chosen policy, or a character-set name is unknown."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """Result of :func:`decode_message`.

    ``codec`` is the Python codec actually used, ``declared`` the MSH-18 name that was chosen (spaces stripped)
    or None when nothing was declared, ``warnings`` one human-readable line per fallback taken.
    """

    text: str
    codec: str
    declared: str | None
    warnings: tuple[str, ...] = ()


def _key(name: str) -> str:
    """Normalise a character-set name for lookup: upper case, without spaces, '_' and '-'."""
    return name.upper().replace(" ", "").replace("_", "").replace("-", "")


# HL7 table 0211 (v2.5.1), keyed by _key(name). ISO IR87 / IR159 are JIS X 0208 / 0212 reached through
# ISO 2022 escapes; Python's iso2022_jp_2 decodes both (plain iso2022_jp does not know JIS X 0212).
_TABLE_0211 = {
    "ASCII": "ascii",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    "ISOIR6": "ascii",
    "ISOIR14": "iso2022_jp_2",  # JIS X 0201 Roman, used together with IR87 in Japan
    "ISOIR87": "iso2022_jp_2",
    "ISOIR159": "iso2022_jp_2",
    "ISO20221994": "iso2022_jp_2",
    "ISOIR100": "iso8859-1",
    "ISOIR192": "utf-8",
    "UNICODE": "utf-8",  # deprecated 0211 value; treated as UTF-8 (the mismatch policy covers anything else)
    "UNICODEUTF8": "utf-8",
    "UNICODEUTF16": "utf-16",
    "UNICODEUTF32": "utf-32",
    "GB180302000": "gb18030",
    "KSX1001": "euc_kr",
    "BIG5": "big5",
}

# Names that are not in table 0211 but that senders write anyway; accepted with a warning.
_ALIASES = {
    "UTF8": "utf-8",
    "LATIN1": "iso8859-1",
    **{f"ISO8859{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}

_ASCII_NAMES = frozenset({"ASCII", "ISOIR6"})
# Codecs whose bytes are not a superset of ASCII in the way the "pure ASCII, no decoding needed" shortcut
# assumes (ISO 2022 is 7-bit but switches sets with ESC sequences; UTF-16/32 are not byte-oriented).
_NOT_ASCII_TRANSPARENT = frozenset({"iso2022_jp_2", "utf-16", "utf-32"})


def codec_for(hl7_name: str | None) -> str:
    """Python codec for an HL7 table 0211 character-set name (HL7 v2.5.1 2.15.9.18).

    Leading/trailing spaces are ignored; an empty or None name means the HL7 default, 7-bit ASCII.
    A few common non-standard spellings ("UTF-8", "ISO-8859-1") are accepted too.
    Raises :class:`CharsetError` for an unknown name.
    """
    if hl7_name is None or not hl7_name.strip():
        return "ascii"
    key = _key(hl7_name)
    codec = _TABLE_0211.get(key) or _ALIASES.get(key)
    if codec is None:
        raise CharsetError(f"unknown HL7 character set {hl7_name.strip()!r} (not in HL7 table 0211)")
    return codec


def _declared_charset(raw: bytes) -> str | None:
    """MSH-18 as declared, read from the bytes; the non-ASCII repetition when repeated; None when not given.

    The first MSH segment is used (batch files start with FHS/BHS; HL7 v2.5.1 2.10, batch protocol).
    """
    data = raw.lstrip(b" \t\r\n\x00\x0b\x1c")
    if data.startswith(b"MSH"):
        start = 0
    else:
        starts = [found + 1 for found in (data.find(b"\rMSH"), data.find(b"\nMSH")) if found >= 0]
        if not starts:
            return None
        start = min(starts)
    end = min((found for found in (data.find(b"\r", start), data.find(b"\n", start)) if found >= 0), default=len(data))
    header = data[start:end]
    if len(header) < 5:
        return None
    field_sep = header[3:4]
    fields = header.split(field_sep)
    if len(fields) < 18:
        return None
    msh2 = fields[1]
    msh18 = fields[17].decode("ascii", errors="replace")
    repetition_sep = chr(msh2[1]) if len(msh2) > 1 and msh2[1] < 0x80 else None
    repetitions = msh18.split(repetition_sep) if repetition_sep else [msh18]
    names = [name.strip() for name in repetitions if name.strip()]
    if not names:
        return None
    for name in names:
        if _key(name) not in _ASCII_NAMES:
            return name
    return names[0]


def decode_message(raw: bytes, *, default: str = "utf-8", mismatch: str = "prefer-utf8") -> Decoded:
    """Decode one HL7 message (or batch) according to its MSH-18 (HL7 v2.5.1 2.15.9.18, table 0211).

    Policy (each fallback adds a warning):

    - pure-ASCII bytes under an ASCII-compatible declared set (or none): decoded as is, no warnings;
    - nothing declared (or a blank MSH-18): ``default`` (UTF-8), then Latin-1;
    - unknown name: as if nothing were declared, with a warning naming it;
    - declared 8859/x but the non-ASCII bytes are valid UTF-8: UTF-8 under ``mismatch="prefer-utf8"``,
      the declared set under ``"declared"`` and ``"strict"``;
    - declared set fails to decode the bytes (e.g. "UNICODE UTF-8" with Latin-1 bytes, ASCII with 8-bit bytes):
      UTF-8 then Latin-1 under ``"prefer-utf8"`` and ``"declared"``; :class:`CharsetError` under ``"strict"``.
    """
    if mismatch not in MISMATCH_POLICIES:
        raise ValueError(f"mismatch must be one of {MISMATCH_POLICIES}, not {mismatch!r}")
    declared = _declared_charset(raw)
    warnings: list[str] = []
    codec = None
    if declared is not None:
        key = _key(declared)
        codec = _TABLE_0211.get(key)
        if codec is None:
            codec = _ALIASES.get(key)
            if codec is None:
                warnings.append(f"unknown MSH-18 character set {declared!r}; decoded with the default {default}")
            else:
                warnings.append(f"MSH-18 {declared!r} is not an HL7 table 0211 name; read as {codec}")

    if codec is None:
        if raw.isascii():
            return Decoded(raw.decode("ascii"), "ascii", declared, tuple(warnings))
        what = "no MSH-18 given" if declared is None else f"unknown MSH-18 {declared!r}"
        return _decode_with_fallback(raw, default, declared, warnings, strict=False, what=what)

    if raw.isascii() and codec not in _NOT_ASCII_TRANSPARENT:
        return Decoded(raw.decode("ascii"), codec, declared, tuple(warnings))

    if codec.startswith("iso8859-") and mismatch == "prefer-utf8" and _is_utf8(raw):
        warnings.append(f"declared {declared} but bytes are UTF-8; decoded as utf-8")
        return Decoded(raw.decode("utf-8"), "utf-8", declared, tuple(warnings))

    return _decode_with_fallback(
        raw, codec, declared, warnings, strict=mismatch == "strict", what=f"declared {declared}"
    )


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _decode_with_fallback(
    raw: bytes, codec: str, declared: str | None, warnings: list[str], *, strict: bool, what: str
) -> Decoded:
    try:
        return Decoded(raw.decode(codec), codec, declared, tuple(warnings))
    except UnicodeDecodeError as exc:
        if strict:
            raise CharsetError(f"{what} but the bytes are not valid {codec}: {exc}") from exc
    for fallback in ("utf-8", "iso8859-1"):
        if fallback == codec:
            continue
        try:
            text = raw.decode(fallback)
        except UnicodeDecodeError:
            continue
        warnings.append(f"{what} but the bytes are not valid {codec}; decoded as {fallback}")
        return Decoded(text, fallback, declared, tuple(warnings))
    raise AssertionError("iso8859-1 decodes any byte string")  # pragma: no cover


def _utf8_fallback(error: UnicodeEncodeError) -> tuple[bytes, int]:
    return error.object[error.start : error.end].encode("utf-8"), error.end


codecs.register_error("hl7-utf8-fallback", _utf8_fallback)


def encode_text(text: str, codec: str) -> bytes:
    """Encode outbound text (e.g. an ACK) in the sender's character set.

    Characters the codec cannot represent are written as their UTF-8 bytes rather than replaced with '?':
    nothing is lost, and for the usual case (an ACK that only copies the sender's own header fields back)
    every character came from that sender's set and encodes cleanly anyway.
    """
    return text.encode(codec, errors="hl7-utf8-fallback")
