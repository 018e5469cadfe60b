"""hl7apy as an independent oracle for field splitting on every corpus message.

hl7apy is parsed with find_groups=False (its group mode drops Z segments) and tolerant validation, on CR-terminated
text (it misreads LF-terminated text, see DESIGN.md section 5). It never unescapes, so its raw field values are
compared with our raw() values, and unescaping is checked separately on the known escapes.

Where hl7apy differs because it re-serialises what it parsed, both sides are brought to the same canonical form
and the reason is stated here (each was checked by hand on the corpus):

1. it drops trailing empty components/subcomponents/repetitions ('MOUSE^MICKEY^' -> 'MOUSE^MICKEY'); HL7 v2 lets a
   sender omit trailing delimiters, so both forms are equivalent, so trailing empty parts are dropped on both sides;
2. it strips leading/trailing spaces of values (PID-1 '1 ', MSH-18 '8859/1 ', ' ' -> absent); we return values
   exactly as sent on purpose (trimming is the mapping's decision), so leaves are compared after strip();
3. it renders numeric data types (NM, SI) as numbers ('0001' -> '1', XTN area code '04131' -> '4131'); a leaf
   is accepted when hl7apy's text is the numeric value of ours;
4. it omits empty fields, and names no fields beyond its version's segment definition (their positions are
   lost), so undefined trailing fields are compared as the sequence of their non-empty values;
5. hl7apy is wrong here: when it serialises text types it re-escapes every escape character that is not part of
   \\H\\ \\N\\ \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (hl7apy.base_datatypes.TextualDataType._escape_value), so the hex escape
   '\\XC7\\' of HL7 v2.5.1 2.7.3 comes back as '\\E\\XC7\\E\\', which means the literal text '\\XC7\\'. A leaf
   is accepted when it equals ours after '\\E\\' -> '\\' on both sides (test_hl7apy_mangles_hex_escapes pins this).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import pytest

import hl7apy.consts as hl7apy_consts
import hl7apy.parser as hl7apy_parser

from interfaces.hl7 import decode_message, parse, split_messages, unescape
from interfaces.hl7.tokenizer import Delimiters, HL7ParseError, Segment
from tests.hl7.conftest import corpus_dir, hl7_files

pytestmark = pytest.mark.corpus

_NUMBER = re.compile(r"[+-]?\d+(\.\d*)?")


def hl7apy_parse(text: str):
    return hl7apy_parser.parse_message(
        text, find_groups=False, validation_level=hl7apy_consts.VALIDATION_LEVEL.TOLERANT
    )


def _trim(parts: list) -> list:
    while parts and parts[-1] in ("", []):
        parts.pop()
    return parts


def canonical(raw: str, delims: Delimiters, verbatim: bool = False) -> list[list[list[str]]]:
    """Repetitions -> components -> subcomponents, leaves stripped, trailing empty parts dropped."""
    if verbatim:  # MSH-1 / MSH-2
        return [[[raw]]]
    reps = []
    for rep in raw.split(delims.repetition):
        comps = []
        for comp in rep.split(delims.component):
            subs = comp.split(delims.subcomponent) if delims.subcomponent else [comp]
            comps.append(_trim([sub.strip() for sub in subs]))
        reps.append(_trim(comps))
    return _trim(reps)


def same_leaf(ours: str, theirs: str, escaped_escape: str = "\\E\\") -> bool:
    if ours == theirs:
        return True
    if escaped_escape in theirs and ours.replace(escaped_escape, "\\") == theirs.replace(escaped_escape, "\\"):
        return True  # hl7apy's re-escaping of \X..\ sequences (reason 5)
    if _NUMBER.fullmatch(ours) and _NUMBER.fullmatch(theirs):
        try:
            return Decimal(ours) == Decimal(theirs)
        except InvalidOperation:
            return False
    return False


def same(ours, theirs) -> bool:
    if isinstance(ours, str) or isinstance(theirs, str):
        return isinstance(ours, str) and isinstance(theirs, str) and same_leaf(ours, theirs)
    return len(ours) == len(theirs) and all(same(a, b) for a, b in zip(ours, theirs))


def hl7apy_input(name: str, text: str) -> list[str]:
    """CR-terminated message texts for hl7apy, made independently of our tokenizer where possible."""
    stripped = text.lstrip(" \r\n\x0b").rstrip("\r\n\x1c")
    if stripped.startswith("MSH") and stripped.count("MSH|") == 1:
        return [stripped.replace("\r\n", "\r") if "\r" in stripped else stripped.replace("\n", "\r")]
    return split_messages(text)  # batches and files with comment lines: segment boundaries from split_messages


def compare_segment(ours: Segment, theirs) -> list[str]:
    delims = ours.delimiters
    named: dict[int, list[str]] = {}
    unnamed: list[str] = []
    for child in theirs.children:
        if child.name is None:
            unnamed.append(child.value)
        else:
            named.setdefault(int(child.name.rsplit("_", 1)[1]), []).append(child.value)
    problems = []
    highest_named = max(named, default=0)
    for number in range(1, max(ours.field_count, highest_named) + 1):
        header = ours.name == "MSH" and number <= 2
        if number > highest_named and unnamed:
            break
        mine = canonical(ours.raw(number), delims, header)
        values = named.get(number, [])
        theirs_value = canonical(delims.repetition.join(values), delims, header) if values else []
        if not same(mine, theirs_value):
            problems.append(f"{ours.name}-{number}: ours {ours.raw(number)!r}, hl7apy {values!r}")
    if unnamed:
        tail = [ours.raw(n) for n in range(highest_named + 1, ours.field_count + 1)]
        tail = [canonical(v, delims) for v in tail if canonical(v, delims)]
        theirs_tail = [canonical(v, delims) for v in unnamed if canonical(v, delims)]
        if not same(tail, theirs_tail):
            problems.append(f"{ours.name} fields after {highest_named}: ours {tail!r}, hl7apy {theirs_tail!r}")
    return problems


@pytest.mark.parametrize("name", hl7_files())
def test_hl7apy_agrees_on_every_field(name):
    text = decode_message((corpus_dir("hl7") / name).read_bytes()).text
    ours_texts = split_messages(text)
    theirs_texts = hl7apy_input(name, text)
    assert len(ours_texts) == len(theirs_texts)
    for ours_text, theirs_text in zip(ours_texts, theirs_texts):
        try:
            ours = parse(ours_text)
        except HL7ParseError as exc:
            # the broken-MSH-2 file (SOURCES.md: refuse it). hl7apy reads it anyway: it does not check
            # the encoding characters, so there is no oracle here, only our refusal.
            assert exc.location == "MSH-2" and name == "adt_a01_v25_hapi_pam_broken_msh2_utf8.hl7"
            continue
        theirs = hl7apy_parse(theirs_text)  # every message we read, the oracle reads too
        assert [s.name for s in theirs.children] == ours.segment_names()
        problems = []
        for mine, their in zip(ours.segments, theirs.children):
            problems += compare_segment(mine, their)
        assert problems == []


def corpus_pair(name: str):
    """(ours, hl7apy's) parse of a single-message corpus file."""
    (text,) = split_messages(decode_message((corpus_dir("hl7") / name).read_bytes()).text)
    return parse(text), hl7apy_parse(text)


def hl7apy_field(message, segment: str, field: int) -> list[str]:
    """hl7apy's raw values (one per repetition) of a field of the first such segment."""
    return [c.value for c in getattr(message, segment.lower()).children if c.name == f"{segment}_{field}"]


def test_msh1_msh2_and_msh18_repetitions_agree():
    ours, theirs = corpus_pair("adt_a08_v25_ssmix2_iso2022jp_kanji_kana.hl7")
    assert hl7apy_field(theirs, "MSH", 1) == [ours.raw("MSH", 1)] == ["|"]
    assert hl7apy_field(theirs, "MSH", 2) == [ours.raw("MSH", 2)] == ["^~\\&"]
    assert hl7apy_field(theirs, "MSH", 18) == ours.raw("MSH", 18).split("~") == ["", "ISO IR87"]


def test_hl7apy_mangles_hex_escapes():
    """Reason 5 of the module docstring: hl7apy turns the hex escape into escaped backslashes."""
    ours, theirs = corpus_pair("siu_s12_v251_dcm4che_hex_escape_ais.hl7")
    (their_ais3,) = hl7apy_field(theirs, "AIS", 3)
    assert ours.raw("AIS", 3) == "34000023^SEPTOPLASTIA (OPERA\\XC7\\\\XC3\\O ISOLADA)^THCD"
    assert their_ais3 == "34000023^SEPTOPLASTIA (OPERA\\E\\XC7\\E\\\\E\\XC3\\E\\O ISOLADA)^THCD"
    assert unescape(their_ais3.split("^")[1], ours.delimiters) == "SEPTOPLASTIA (OPERA\\XC7\\\\XC3\\O ISOLADA)"
    # what the standard means (2.7, hexadecimal data): Latin-1 bytes C7 C3, the MSH-18 character set
    assert ours.value("AIS", 3, comp=2) == "SEPTOPLASTIA (OPERAÇÃO ISOLADA)"


def test_known_escapes_where_hl7apy_keeps_the_raw_text():
    """Escapes hl7apy leaves alone (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\): its raw value equals ours; we decode it."""
    text = "MSH|^~\\&|A|B|C|D|||ORM^O01|1|P|2.5\rNTE|1||a \\F\\ b \\S\\ c \\T\\ d \\R\\ e \\E\\ f\r"
    ours, theirs = parse(text), hl7apy_parse(text)
    (their_nte3,) = hl7apy_field(theirs, "NTE", 3)
    assert their_nte3 == ours.raw("NTE", 3)
    assert unescape(their_nte3, ours.delimiters) == ours.value("NTE", 3) == "a | b ^ c & d ~ e \\ f"


def test_bug13_escape_hl7apy_raw_equals_ours():
    text = decode_message((corpus_dir("bugs") / "bug13_escape_e_then_r.hl7").read_bytes()).text
    msg = parse(text)
    theirs = hl7apy_parse(text)
    (their_nte3,) = [c.value for c in theirs.nte.children if c.name == "NTE_3"]
    assert their_nte3 == msg.raw("NTE", 3)
    assert unescape(their_nte3, msg.delimiters) == "Path: \\R\\ and share \\\\srv\\scans"
