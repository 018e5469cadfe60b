"""HL7 v2 text handling: charset decoding, tokenizing, escaping, timestamps and acknowledgments.

Pure functions, no I/O. See HL7 v2.5.1 chapter 2 (control) for the rules each module implements.
"""

from interfaces.hl7.ack import ErrorDetail, build_ack, build_reject_for_unparsable
from interfaces.hl7.charsets import CharsetError, Decoded, codec_for, decode_message, encode_text
from interfaces.hl7.escape import escape, unescape
from interfaces.hl7.timestamps import format_dtm, parse_date, parse_dtm
from interfaces.hl7.tokenizer import (
    HL7_NULL,
    STANDARD_DELIMITERS,
    Delimiters,
    HL7ParseError,
    Message,
    Segment,
    parse,
    split_messages,
)

__all__ = [
    "HL7_NULL",
    "STANDARD_DELIMITERS",
    "CharsetError",
    "Decoded",
    "Delimiters",
    "ErrorDetail",
    "HL7ParseError",
    "Message",
    "Segment",
    "build_ack",
    "build_reject_for_unparsable",
    "codec_for",
    "decode_message",
    "encode_text",
    "escape",
    "format_dtm",
    "parse",
    "parse_date",
    "parse_dtm",
    "split_messages",
    "unescape",
]
