"""Apply a mapping profile to one tokenized HL7 v2 message: the domain commands it asks for.

Nothing is written here; the result is plain command values (app.commands) that the intake
applies in one unit of work. The same function serves the analyst's dry run.

Groups (HL7 v2.5.1 chapter 4, abstract message syntax of ORM^O01 4.4.1, OMG^O19 4.4.6, OMI^O23 4.4.10;
ORU^R01 7.3.1): the segments from an ORC up to the next ORC form one ORDER group (ORC, its TIMING TQ1/TQ2,
the OBR, and what follows the OBR: NTE, OBX, IPC, the IHE ZDS...). An OBR that follows an OBR of the same
group without an ORC of its own starts a group too (senders that omit the ORC). Segments before the first
group (MSH, PID, PV1...) belong to the message. A value of a group-scoped segment is read from its own
group only: a group without an IPC, a ZDS or a TQ1 has none, it never borrows the first group's
(:class:`Layout`). Each group is one requested procedure; its steps are its IPC segments, else one.
Groups that name the same placer order number (ORC-2/OBR-2) are one order with several requested
procedures; a group with another placer order number is another order (its own command, its own ORC-1
order control), so a later CA for it finds it. A group without any order number belongs to the order
before it.

Error locations name the segment occurrence and field repetition (``OBR[2]-24``: the 24th field of the
second OBR of the message; ERR-2 ``OBR^2^24``, HL7 v2.5.1 2.15.5.2 ERL); warnings carry theirs
(:class:`LocatedWarning`).

Beyond reading fields, a profile may look a code up in one of its tables (a code the table lacks is
an UnknownCode naming the profile, the table and the code), choose the patient identifier among
the repetitions of PID-3 by assigning authority and identifier type, and give station AE titles by
rules when the message names none.

The message is any object with ``value``/``values`` (mappings.transforms.MessageView), ``all(segment)``,
``message_code``, ``trigger_event``, ``sending_application`` and ``sending_facility``: the HL7
tokenizer's Message is one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from app.commands import (AppointmentData, CancelOrder, ChangePatientId, CodeData, HoldOrder, MergePatient, OrderData,
                          OrderRef, PatientData, PatientRef, PlaceOrder, ProcedureData, RecordAppointment, RecordReport,
                          RecordVisit, RegisterPatient, SetStepStatus, StepData, UpdateOrder, VisitData)
from app.errors import InvalidInput, UnknownCode, Unsupported
from mappings.paths import FieldPath
from mappings.profile import (APPOINTMENT_ACTIONS, VISIT_ACTIONS, FieldSpec, IdentifierPolicy, Profile, ProfileError,
                              Source)
from mappings.transforms import FROM_TEXT, HL7_NULL, TRANSFORMS, Context

# Report text: the OBX value types that hold text (HL7 table 0125), and the DICOM code of the
# OBX that carries the Study Instance UID (IHE RAD TF-2 "DICOM Study" 113014^DCM).
TEXT_VALUE_TYPES = {"TX", "FT"}  # ST carries identifiers (UIDs) in IHE reports
STUDY_UID_CODE = "113014"
_MINUTES = {"S": 1 / 60, "SEC": 1 / 60, "M": 1.0, "MIN": 1.0, "H": 60.0, "HR": 60.0, "D": 1440.0}

# MRG-1 Prior Patient Identifier List (HL7 v2.5.1 chapter 3, MRG segment): read with PID-3's identifier policy.
PRIOR_IDENTIFIERS = FieldPath.parse("MRG-1")
# ORC-8 Parent (EIP, HL7 v2.5.1 4.5.1.8): the placer order number of a child order's parent.
PARENT_ORDER = FieldPath.parse("ORC-8.1")


@dataclass
class MappingResult:
    commands: list
    action: str
    warnings: list[str] = field(default_factory=list)
    origins: list[dict[str, str]] = field(default_factory=list)  # per command: domain key -> location read


class LocatedWarning(str):  # noqa: A001 - a warning text that knows the field it is about
    """A warning's text, with the location (``OBR[2]-24``) of the field it is about, or None."""

    location: str | None = None

    def __new__(cls, text: str, location: str | None = None) -> "LocatedWarning":
        obj = super().__new__(cls, text)
        obj.location = location
        return obj


def where(segment: str, occurrence: int = 1, field_number: int | None = None, rep: int | None = None) -> str:
    """A location for ERR-2: ``SEG``, ``SEG-7``; ``SEG[2]-7`` for the second segment of that name,
    ``SEG-3[2]`` for the second repetition of the field (HL7 v2.5.1 2.15.5.2, data type ERL)."""
    text = segment if occurrence in (None, 1) else f"{segment}[{occurrence}]"
    if field_number is not None:
        text += f"-{field_number}" + (f"[{rep}]" if rep not in (None, 1) else "")
    return text


def _count(msg, segment: str) -> int:
    return len(msg.all(segment))


class Layout:
    """The ORDER groups of a message (see the module docstring): for each group, the occurrence numbers of
    every segment in it; and which segment names occur inside groups at all."""

    __slots__ = ("groups", "grouped", "counts", "_occ")

    def __init__(self, msg):
        self.counts = seen = {}  # segment name -> how many the message has
        self._occ: dict[tuple[str, int], list[int]] = {}
        group, has_obr = 0, False
        for seg in msg.segments:
            name = seg.name
            seen[name] = seen.get(name, 0) + 1
            if name == "ORC" or (name == "OBR" and (group == 0 or has_obr)):
                group, has_obr = group + 1, False
            if name == "OBR":
                has_obr = True
            if group:
                self._occ.setdefault((name, group), []).append(seen[name])
        self.groups = group
        self.grouped = {name for name, _ in self._occ}

    def occurrences(self, segment: str, k: int) -> list[int]:
        """Occurrence numbers (in the whole message) of ``segment`` inside the k-th group."""
        return self._occ.get((segment, k), [])


def message_type(msg) -> str:
    return f"{msg.message_code}^{msg.trigger_event}"


def locate(profile: Profile, key: str, msg, origins: dict[str, str] | None = None, k: int = 1) -> str | None:
    """The HL7 field an error about domain value ``key`` (of the k-th group) should point at (for ERR-2).

    The field the value was read from; for a missing value the first source path whose segment
    is in the message (in the k-th group, for a group's segment), else the first source path.
    """
    if origins and key in origins:
        return origins[key]
    spec = profile.spec(key)
    if spec is None:
        return None
    return Mapper(profile).missing_location(spec, msg, k, {})


def header_sender(raw: bytes) -> tuple[str, str]:
    """MSH-3.1 and MSH-4.1 (sending application and facility) read from the bytes before they are decoded: the
    header is ASCII in every character set HL7 allows (HL7 v2.5.1 2.15.9.18); ('', '') without an MSH. Runs on
    every message: it reads the header line only."""
    start = raw.find(b"MSH")
    if start > 0 and raw[start - 1] not in b" \t\r\n\x00\x0b\x1c":     # a batch: the first MSH of a line
        found = [i + 1 for i in (raw.find(b"\rMSH"), raw.find(b"\nMSH")) if i >= 0]
        start = min(found) if found else -1
    if start < 0 or len(raw) < start + 8:
        return "", ""
    ends = [i for i in (raw.find(b"\r", start, start + 4096), raw.find(b"\n", start, start + 4096)) if i >= 0]
    fields = raw[start:min(ends) if ends else start + 4096].split(raw[start + 3:start + 4], 4)
    component = fields[1][:1] if len(fields) > 1 and fields[1][:1] else b"^"
    part = lambda n: fields[n].split(component, 1)[0].decode("ascii", "replace").strip() if len(fields) > n else ""  # noqa: E731
    return part(2), part(3)


def charset_policy(profiles, raw: bytes, default: str, mismatch: str, profile: Profile | None = None) -> tuple[str, str]:
    """(codec for a message without MSH-18, mismatch policy) for ``raw``: those of ``profile``, else of its sender's
    profile (``charset:``), else ``default`` and ``mismatch`` (the settings)."""
    if profile is None:
        try:
            profile = profiles.for_sender(*header_sender(raw))
        except ProfileError:
            return default, mismatch
    return profile.charset_policy(default, mismatch)


def sender_of(msg) -> str:
    """MSH-3 ^ MSH-4 (sending application and facility namespace ids, HL7 v2.5.1 2.15.9.3-4)."""
    return f"{msg.sending_application}^{msg.sending_facility}"


class Mapper:
    def __init__(self, profile: Profile):
        self.profile = profile
        self._msg = None
        self._layout: Layout | None = None

    def layout(self, msg) -> Layout:
        if msg is not self._msg:
            self._msg, self._layout = msg, Layout(msg)
        return self._layout

    def occurrence(self, msg, segment: str, k: int, at: dict[str, int]) -> int | None:
        """The occurrence of ``segment`` that belongs to the k-th group; None when that group has none.

        A segment that occurs inside ORDER groups is read from the k-th group only. A segment of the
        message (PID, PV1, MRG...) is its k-th occurrence when there are that many (A40: one PID/MRG pair
        per merge), else the first."""
        if at and segment in at:
            return at[segment]
        layout = self.layout(msg)
        found = layout._occ.get((segment, k))
        if found:
            return found[0]
        if segment in layout.grouped:
            return None
        return k if layout.counts.get(segment, 0) >= k else 1

    def missing_location(self, spec: FieldSpec, msg, k: int, at: dict[str, int]) -> str | None:
        """Where a value none of ``spec``'s sources has should be reported: the first source whose segment
        the k-th group (or the message) has, else the first source."""
        for source in spec.sources:
            occ = self.occurrence(msg, source.path.segment, k, at)
            if occ is not None and occ <= _count(msg, source.path.segment):
                return where(source.path.segment, occ, source.path.field)
        if not spec.sources:
            return None
        first = spec.sources[0].path
        occ = self.occurrence(msg, first.segment, k, at)
        return where(first.segment, occ or 1, first.field)

    # Reading values ----------------------------------------------------------------------
    def read(self, key: str, msg, ctx: Context, k: int = 1, at: dict[str, int] | None = None):
        """The domain value ``key`` for the k-th order group, or None when no source has one.

        ``at`` pins the occurrence of some segments (e.g. {"IPC": 2}: the second IPC).
        """
        spec = self.profile.spec(key)
        if spec is None:
            return None
        at = at or {}
        value, origin = self._first(spec, msg, ctx, k, at)
        if origin is not None:
            ctx.origins.setdefault(key, origin)
        if value is None and spec.otherwise == "received":
            value = ctx.local_naive(ctx.received_at).replace(microsecond=0)
        if spec.required and (value is None or value in ("", HL7_NULL)):
            paths = ", ".join(str(s.path) for s in spec.sources)
            group = f" (order group {k})" if k > 1 and self.layout(msg).groups >= k else ""
            raise InvalidInput(f"{key} missing{group}: none of {paths} has a value",
                               location=self.missing_location(spec, msg, k, at), missing=True)
        return value

    def _first(self, spec: FieldSpec, msg, ctx: Context, k: int, at: dict[str, int]):
        kind, fn = TRANSFORMS[spec.transform]
        for source in spec.sources:
            p = source.path
            occ = self.occurrence(msg, p.segment, k, at)
            if occ is None:  # the group has no such segment
                continue
            if p.rep is None:   # every repetition, each read as a single value would be (regex, table, transform)
                values = []
                for rep in range(1, len(msg.values(p.segment, p.field, 1, 1, occ)) + 1):
                    one = self._one(dataclasses.replace(source, path=dataclasses.replace(p, rep=rep)), spec, msg,
                                    ctx, k, at, occ)
                    values.extend(one if isinstance(one, tuple) else [] if one in (None, "", HL7_NULL) else [one])
                if values:
                    return tuple(dict.fromkeys(values)), where(p.segment, occ, p.field)
                continue
            value = self._one(source, spec, msg, ctx, k, at, occ)
            if value == HL7_NULL:
                return HL7_NULL, where(p.segment, occ, p.field, p.rep)
            if value not in (None, ""):
                return value, where(p.segment, occ, p.field, p.rep)
        if spec.default is not None:
            value = fn(spec.default, ctx) if kind != "field" else \
                FROM_TEXT[spec.transform](spec.default, ctx) if spec.transform in FROM_TEXT else spec.default
            if value not in (None, ""):
                return value, None
        return None, None

    def _one(self, source: Source, spec: FieldSpec, msg, ctx: Context, k: int, at: dict[str, int], occ: int):
        """The value one source (of one repetition) gives: the field read by a field transform, or its text
        narrowed by the regex, looked up in the table and read by the transform; None when it has none. The
        transform's warnings are about the source's field."""
        kind, fn = TRANSFORMS[spec.transform]
        p = source.path
        if kind == "field" and not source.table:
            return self._located(ctx, p, occ, fn, msg, p, occ, ctx) or None
        raw = self._raw(source, msg, k, at)
        if not raw or raw == HL7_NULL:
            return raw or None
        if source.table:
            raw = self.lookup(source, raw, where(p.segment, occ, p.field, p.rep))
            if raw is None:
                return None
        return self._located(ctx, p, occ, FROM_TEXT[spec.transform] if kind == "field" else fn, raw, ctx)

    @staticmethod
    def _located(ctx: Context, p: FieldPath, occ: int, fn, *args):
        """``fn(*args)``; the warnings it adds are about the field ``p`` of segment occurrence ``occ``."""
        before = len(ctx.warnings)
        value = fn(*args)
        for i in range(before, len(ctx.warnings)):
            if getattr(ctx.warnings[i], "location", None) is None:
                ctx.warnings[i] = LocatedWarning(ctx.warnings[i], where(p.segment, occ, p.field, p.rep))
        return value

    def _value(self, msg, p: FieldPath, k: int, at: dict[str, int]) -> str:
        occ = self.occurrence(msg, p.segment, k, at)
        return "" if occ is None else msg.value(p.segment, p.field, p.rep, p.comp, p.sub, occ).strip()

    def _raw(self, source: Source, msg, k: int, at: dict[str, int]) -> str:
        """The text a source reads: its field (narrowed by its regex), or its fields joined."""
        if source.concat:
            parts = [self._value(msg, p, k, at) for p in source.concat]
            raw = source.separator.join(part for part in parts if part and part != HL7_NULL)
        else:
            raw = self._value(msg, source.path, k, at)
        if source.regex is not None and raw:
            m = source.regex.search(raw)
            raw = (m.group(1) if m.groups() else m.group(0)) if m else ""
        return raw

    def lookup(self, source: Source, code: str, location: str | None = None) -> str | None:
        """``code`` looked up in the source's table and column. A code the table lacks is an error
        naming the profile, the table and the code (ACK AE, HL7 table 0357 code 103 "table value
        not found"); the message can be reprocessed once the table has it. With ``missing: skip``
        the next source is tried instead."""
        row = self.profile.tables[source.table].get(code)
        value = row.get(source.column, "") if row is not None else ""
        if value:
            return value
        if source.missing == "skip":
            return None
        what = f"no entry {code!r}" if row is None else f"no {source.column} for {code!r}"
        raise UnknownCode(f"profile {self.profile.name!r}: table {source.table!r} has {what}",
                          location=location or source.path.location)

    def identifier(self, policy: IdentifierPolicy, path: FieldPath, msg, k: int = 1,
                   ctx: Context | None = None, key: str = "") -> tuple[str, str]:
        """(identifier, issuer) from the repetition of the CX field ``path`` the policy chooses
        (CX-1 ID number, CX-4.1 assigning authority, CX-5 identifier type code; HL7 v2.5.1 chapter 2A, data type CX).
        The repetition chosen is remembered as the origin of ``key``."""
        occ = self.occurrence(msg, path.segment, k, {}) or 1
        candidates = []
        for rep in range(1, len(msg.values(path.segment, path.field, 1, 1, occ)) + 1):
            number = msg.value(path.segment, path.field, rep, 1, 1, occ).strip()
            if number and number != HL7_NULL:
                candidates.append((number, msg.value(path.segment, path.field, rep, 4, 1, occ).strip(),
                                   msg.value(path.segment, path.field, rep, 5, 1, occ).strip(), rep))

        def chosen(number: str, assigner: str, rep: int) -> tuple[str, str]:
            if ctx is not None and key:
                ctx.origins.setdefault(key, where(path.segment, occ, path.field, rep))
            return number, assigner or policy.issuer
        for authority in policy.authorities or (None,):
            for id_type in policy.types or (None,):
                for number, assigner, kind, rep in candidates:
                    if authority in (None, assigner) and id_type in (None, kind):
                        return chosen(number, assigner, rep)
        if candidates and policy.otherwise == "first":
            number, assigner, _, rep = candidates[0]
            return chosen(number, assigner, rep)
        wanted = []
        if policy.authorities:
            wanted.append(f"assigning authority {' or '.join(policy.authorities)}")
        if policy.types:
            wanted.append(f"identifier type {' or '.join(policy.types)}")
        raise InvalidInput(f"profile {self.profile.name!r}: no {path.location} repetition with "
                           f"{' and '.join(wanted)}", location=where(path.segment, occ, path.field), missing=True)

    def text(self, key: str, msg, ctx: Context, k: int = 1, at: dict[str, int] | None = None) -> str:
        value = self.read(key, msg, ctx, k, at)
        if value is None or value == HL7_NULL:
            return ""
        return value if isinstance(value, str) else str(value)

    # Commands ----------------------------------------------------------------------------
    def commands(self, msg, ctx: Context) -> MappingResult:
        mtype = message_type(msg)
        ctx.names = self.profile.person_names
        action = self.profile.messages.get(mtype)
        if action is None:
            if not msg.message_code:
                raise Unsupported("MSH-9 (message type) is empty", location="MSH-9")
            # spelt without the component separator, which ERR-8 would have to escape as \S\
            spelt = f"{msg.message_code} {msg.trigger_event}" if msg.trigger_event else \
                f"{msg.message_code} without a trigger event"
            raise Unsupported(f"message type {spelt} is not handled by profile {self.profile.name!r}",
                              location="MSH-9")
        if action == "register_patient":
            result = MappingResult([RegisterPatient(self.patient(msg, ctx))], action)
        elif action in VISIT_ACTIONS:
            result = MappingResult([RecordVisit(self.patient(msg, ctx), self.visit(msg, ctx), action)], action)
        elif action == "merge_patient":
            pairs = range(1, max(1, _count(msg, "MRG")) + 1)
            result = MappingResult([MergePatient(self.patient(msg, ctx, k), self.prior(msg, ctx, k)) for k in pairs],
                                   action)
        elif action in APPOINTMENT_ACTIONS:
            patient = self.patient(msg, ctx) if _count(msg, "PID") else None
            result = MappingResult([RecordAppointment(patient, self.appointment(msg, ctx), APPOINTMENT_ACTIONS[action])],
                                   action)
        elif action == "report":
            result = MappingResult([self.report(msg, ctx)], action)
        elif action == "acknowledge":
            ctx.warnings.append(LocatedWarning(f"{message_type(msg)} acknowledged without action (profile "
                                        f"{self.profile.name!r}: acknowledge)", "MSH-9"))
            result = MappingResult([], action)
        elif action == "change_patient_id":
            result = MappingResult([ChangePatientId(self.patient(msg, ctx), self.prior(msg, ctx))], action)
        else:
            result = self.order_commands(msg, ctx)
        result.warnings = list(ctx.warnings)
        return result

    def patient(self, msg, ctx: Context, k: int = 1) -> PatientData:
        """The patient of the k-th PID segment (A40 carries one PID/MRG pair per merge)."""
        policy = self.profile.patient_identifier
        if policy is not None:
            patient_id, issuer = self.identifier(policy, policy.field, msg, k, ctx, "patient.id")
        else:
            patient_id, issuer = self.text("patient.id", msg, ctx, k), self.text("patient.issuer", msg, ctx, k)
        name = self.read("patient.name", msg, ctx, k)
        birth = self.read("patient.birth_date", msg, ctx, k)
        sex = self.read("patient.sex", msg, ctx, k)
        return PatientData(
            patient_id=patient_id,
            issuer=issuer,
            name=None if name is None else ("" if name == HL7_NULL else name),
            birth_date=None if birth in (None, HL7_NULL) else birth,
            birth_date_given=birth is not None,
            sex=None if sex is None else ("" if sex == HL7_NULL else sex),
        )

    def prior(self, msg, ctx: Context, k: int = 1) -> PatientRef:
        policy = self.profile.patient_identifier
        if policy is not None:
            return PatientRef(*self.identifier(policy, PRIOR_IDENTIFIERS, msg, k, ctx, "merge.prior_id"))
        return PatientRef(self.text("merge.prior_id", msg, ctx, k), self.text("merge.prior_issuer", msg, ctx, k))

    def visit(self, msg, ctx: Context) -> VisitData:
        return VisitData(
            visit_number=self.text("visit.number", msg, ctx),
            patient_class=self.text("visit.patient_class", msg, ctx),
            location=self.text("visit.location", msg, ctx),
            prior_location=self.text("visit.prior_location", msg, ctx),
            admitted_at=self.read("visit.admitted_at", msg, ctx),
            discharged_at=self.read("visit.discharged_at", msg, ctx),
            arrived_at=self.read("visit.arrived_at", msg, ctx) if self.profile.messages.get(message_type(msg)) == "arrive"
            else None,
        )

    def appointment(self, msg, ctx: Context) -> AppointmentData:
        raw_duration = self.text("appointment.duration", msg, ctx)
        units = self.text("appointment.duration_units", msg, ctx).upper() or "M"
        try:
            duration = float(raw_duration) * _MINUTES.get(units, 1.0) if raw_duration else None
        except ValueError:
            ctx.warnings.append(LocatedWarning(f"appointment duration {raw_duration!r} is not a number: ignored",
                                        ctx.origins.get("appointment.duration")))
            duration = None
        return AppointmentData(
            placer_appointment_id=self.text("appointment.placer_id", msg, ctx),
            filler_appointment_id=self.text("appointment.filler_id", msg, ctx),
            placer_order_number=self.text("appointment.placer_order_number", msg, ctx),
            filler_order_number=self.text("appointment.filler_order_number", msg, ctx),
            start=self.read("appointment.start", msg, ctx),
            duration_minutes=duration,
            resource=self.text("appointment.resource", msg, ctx),
            location=self.text("appointment.location", msg, ctx),
        )

    def report(self, msg, ctx: Context) -> RecordReport:
        """The report of an ORU^R01: its text is every text-valued OBX-5, in order; the Study
        Instance UID comes from the OBX coded 113014 (DICOM Study)."""
        lines, study_uid = [], ""
        for k in range(1, _count(msg, "OBX") + 1):
            value_type = msg.value("OBX", 2, occurrence=k).strip().upper()
            code = msg.value("OBX", 3, occurrence=k).strip()
            if code == STUDY_UID_CODE and not study_uid:
                study_uid = msg.value("OBX", 5, occurrence=k).strip()
            elif value_type in TEXT_VALUE_TYPES:
                lines.extend(v for v in msg.values("OBX", 5, occurrence=k) if v.strip())
        return RecordReport(ref=self.order_ref(msg, ctx), status=self.text("report.status", msg, ctx),
                            text="\n".join(lines), study_instance_uid=study_uid,
                            observed_at=self.read("report.observed_at", msg, ctx))

    def order_ref(self, msg, ctx: Context, k: int = 1) -> OrderRef:
        """How the k-th group names its order (ORC-2/OBR-2 placer, ORC-3/OBR-3 filler, accession)."""
        return OrderRef(
            placer_order_number=self.text("order.placer_order_number", msg, ctx, k),
            placer_issuer=self.text("order.placer_issuer", msg, ctx, k),
            filler_order_number=self.text("order.filler_order_number", msg, ctx, k),
            accession_number=self.text("order.accession_number", msg, ctx, k),
        )

    def orders(self, msg, ctx: Context) -> list[tuple[list[int], list[int]]]:
        """The orders of an order message: for each, (its groups, the groups that are its requested procedures).

        Groups with the same placer order number (ORC-2/OBR-2 with its namespace, else the filler order number)
        are one order; a group without either belongs to the order before it. A child order (ORC-8 Parent,
        HL7 v2.5.1 4.5.1.8; ORC-1 CH, table 0119) belongs to its parent's order, and when an order has
        children, they are its requested procedures (the parent's own OBR describes the whole)."""
        layout = self.layout(msg)
        keys: dict[tuple[str, str, str], int] = {}
        orders: list[tuple[list[int], list[int]]] = []
        children: set[int] = set()
        for k in range(1, layout.groups + 1):
            placer = self.text("order.placer_order_number", msg, ctx, k)
            filler = self.text("order.filler_order_number", msg, ctx, k)
            key = ("placer", placer, self.text("order.placer_issuer", msg, ctx, k)) if placer else \
                ("filler", filler, "") if filler else None
            parent_occ = self.occurrence(msg, PARENT_ORDER.segment, k, {})
            parent = msg.value("ORC", PARENT_ORDER.field, 1, PARENT_ORDER.comp, 1, parent_occ).strip() \
                if parent_occ is not None else ""
            if parent and parent != HL7_NULL:
                match = [i for (kind, number, _), i in keys.items() if kind == "placer" and number == parent]
                if match:
                    orders[match[0]][0].append(k)
                    children.add(k)
                    continue
            if key is None and orders:  # no order number of its own: part of the order before it
                orders[-1][0].append(k)
            elif key is not None and key in keys:
                orders[keys[key]][0].append(k)
            else:
                if key is not None:
                    keys[key] = len(orders)
                orders.append(([k], []))
        for groups, procedures in orders:
            kids = [k for k in groups if k in children]
            with_obr = [k for k in groups if layout.occurrences("OBR", k)]
            procedures.extend(kids or with_obr or groups[:1])
        return orders or [([1], [1])]

    def order_commands(self, msg, ctx: Context) -> MappingResult:
        """One command per order of the message (:meth:`orders`), each by the ORC-1 order control of its first
        group (HL7 v2.5.1 4.5.1.1, table 0119)."""
        if not _count(msg, "ORC") and not _count(msg, "OBR"):
            raise InvalidInput("order message without ORC and OBR segments", location="ORC", missing=True)
        commands, actions, origins = [], [], []
        shared = ctx.origins
        try:
            for groups, procedures in self.orders(msg, ctx):
                ctx.origins = {}  # what this order's values were read from (for an error about its command)
                found, action = self.order_command(msg, ctx, groups, procedures)
                for key, value in ctx.origins.items():
                    shared.setdefault(key, value)
                actions.append(action)
                commands.extend(found)
                origins.extend(ctx.origins for _ in found)
        finally:
            for key, value in ctx.origins.items():
                shared.setdefault(key, value)
            ctx.origins = shared
        return MappingResult(commands, actions[0], origins=origins)

    def order_command(self, msg, ctx: Context, groups: list[int], procedures: list[int]):
        """(commands, action) for one order made of ``groups``: none for a status change that changes nothing here,
        its step status too where the profile's step_statuses table says so."""
        first = groups[0]
        control = self.text("order.control", msg, ctx, first)
        action = self.profile.order_controls.get(control)
        if action is None:
            known = ", ".join(sorted(self.profile.order_controls))
            raise UnknownCode(f"unsupported order control {control!r} (profile {self.profile.name!r} handles "
                               f"{known}; HL7 table 0119)", location=ctx.origins.get("order.control")
                               or where("ORC", self.occurrence(msg, "ORC", first, {}) or 1, 1))
        ref = self.order_ref(msg, ctx, first)
        step_status = self.profile.step_status(control, self.text("order.status", msg, ctx, first))
        if action == "status" and step_status:
            return [SetStepStatus(ref, step_status)], action
        if action == "status":
            status = self.text("order.status", msg, ctx, first)
            action = self.profile.status_changes.get(status)
            if action is None:
                ctx.warnings.append(LocatedWarning(f"status change to {status or '(empty)'} recorded; it changes "
                                                   f"nothing here", ctx.origins.get("order.status")))
                return [], "status"
        if action in ("hold", "release"):
            return [HoldOrder(ref=ref, release=action == "release")], action
        if action in ("cancel", "discontinue"):
            return [CancelOrder(ref=ref, discontinue=action == "discontinue",
                                reason=self.text("order.reason", msg, ctx, first))], action
        for k in groups[1:]:  # one order has one accession number
            spec = self.profile.spec("order.accession_number")
            other, origin = self._first(spec, msg, ctx, k, {}) if spec is not None else (None, None)
            if other and other != HL7_NULL and ref.accession_number and other != ref.accession_number:
                raise InvalidInput(f"order group {k} names {ref.describe()} with accession number {other}, "
                                   f"group {first} with {ref.accession_number}: one order has one accession "
                                   f"number (send another placer order number for another order)",
                                   location=origin)
        order = OrderData(
            ref=ref,
            accession_number=ref.accession_number,
            priority=self.text("order.priority", msg, ctx, first),
            referring_physician=self.text("order.referring_physician", msg, ctx, first),
            requesting_physician=self.text("order.requesting_physician", msg, ctx, first),
            reason=self.text("order.reason", msg, ctx, first),
            procedures=tuple(self.procedure(msg, ctx, k) for k in procedures),
        )
        patient = self.patient(msg, ctx)
        cmd = PlaceOrder(patient, order) if action == "place" else UpdateOrder(patient, order)
        return [cmd, *([SetStepStatus(ref, step_status)] if step_status else [])], action

    def step(self, msg, ctx: Context, k: int, at: dict[str, int], code: str = "") -> StepData:
        aets = self.read("step.station_aets", msg, ctx, k, at)
        aets = tuple(aets) if isinstance(aets, tuple) else ((aets,) if aets else ())
        modality = self.text("step.modality", msg, ctx, k, at)
        station_name = self.text("step.station_name", msg, ctx, k, at)
        if (not aets or not station_name) and self.profile.stations:
            rule = self.profile.station_rule(modality=modality, procedure=code, sender=sender_of(msg),
                                             location=self.text("visit.location", msg, ctx))
            if rule is not None:
                aets, station_name = aets or rule.aets, station_name or rule.name
        return StepData(
            sps_id=self.text("step.sps_id", msg, ctx, k, at),
            modality=modality,
            scheduled_start=self.read("step.scheduled_start", msg, ctx, k, at),
            station_aets=aets,
            station_name=station_name,
            description=self.text("step.description", msg, ctx, k, at),
            performing_physician=self.text("step.performing_physician", msg, ctx, k, at),
            expected_duration_minutes=self.read("step.expected_duration", msg, ctx, k, at),
            protocol_codes=self.codes("step.protocol_codes", msg, ctx, k, at),
        )

    def codes(self, key: str, msg, ctx: Context, k: int, at: dict[str, int]) -> tuple[CodeData, ...]:
        """The codes of ``key`` (one, or several from a [*] source or a table cell)."""
        value = self.read(key, msg, ctx, k, at)
        if isinstance(value, CodeData):
            return (value,)
        return tuple(v for v in value if isinstance(v, CodeData)) if isinstance(value, tuple) else ()

    def procedure(self, msg, ctx: Context, k: int) -> ProcedureData:
        """The k-th group's requested procedure; one step per IPC segment of its group (OMI^O23,
        HL7 v2.5.1 4.4.10), else one step."""
        code = self.text("procedure.code_value", msg, ctx, k)
        ipcs = self.layout(msg).occurrences("IPC", k)
        steps = (tuple(self.step(msg, ctx, k, {"IPC": j}, code) for j in ipcs)
                 or (self.step(msg, ctx, k, {}, code),))
        return ProcedureData(
            requested_procedure_id=self.text("procedure.requested_procedure_id", msg, ctx, k),
            study_instance_uid=self.text("procedure.study_instance_uid", msg, ctx, k),
            code_value=code,
            code_scheme=self.text("procedure.code_scheme", msg, ctx, k),
            code_meaning=self.text("procedure.code_meaning", msg, ctx, k),
            description=self.text("procedure.description", msg, ctx, k),
            priority=self.text("procedure.priority", msg, ctx, k),
            steps=steps,
            body_part=self.text("procedure.body_part", msg, ctx, k),
        )
