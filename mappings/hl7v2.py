"""Apply a mapping profile to one tokenized HL7 v2 message: the domain commands it asks for.

Nothing is written here; the result is plain command values (app.commands) that the intake
applies in one unit of work. The same function serves the analyst's dry run.

Groups: every OBR segment is one requested procedure with one scheduled step (HL7 v2.5.1
4.4.1: ORC/OBR order groups). Order values are read from the first occurrence of their segment;
procedure and step values from the k-th occurrence of their segment for the k-th OBR when the
message has that many (ORC, OBR, ZDS, IPC, TQ1 repeat per order), else from the first.

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


@dataclass
class MappingResult:
    commands: list
    action: str
    warnings: list[str] = field(default_factory=list)


def _count(msg, segment: str) -> int:
    return len(msg.all(segment))


def _group_occurrences(msg, segment: str, k: int) -> list[int]:
    """Occurrence numbers of ``segment`` between the k-th OBR and the next one."""
    group, seen, found = 0, 0, []
    for seg in msg.segments:
        if seg.name == "OBR":
            group += 1
        elif seg.name == segment:
            seen += 1
            if group == k:
                found.append(seen)
    return found


def message_type(msg) -> str:
    return f"{msg.message_code}^{msg.trigger_event}"


def locate(profile: Profile, key: str, msg, origins: dict[str, str] | None = None) -> str | None:
    """The HL7 field an error about domain value ``key`` should point at (for ERR-2).

    The field the value was read from; for a missing value the first source path whose segment
    is in the message, else the first source path.
    """
    if origins and key in origins:
        return origins[key]
    spec = profile.spec(key)
    if spec is None:
        return None
    for source in spec.sources:
        if _count(msg, source.path.segment):
            return source.path.location
    return spec.sources[0].path.location if spec.sources else None


def _occurrence(msg, segment: str, k: int, at: dict[str, int]) -> int:
    """The occurrence of ``segment`` that belongs to the k-th order group (see the module docstring)."""
    return at.get(segment) or (k if _count(msg, segment) >= k else 1)


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

    # Reading values ----------------------------------------------------------------------
    def read(self, key: str, msg, ctx: Context, k: int = 1, at: dict[str, int] | None = None):
        """The domain value ``key`` for the k-th order group, or None when no source has one.

        ``at`` pins the occurrence of some segments (e.g. {"IPC": 2}: the second IPC).
        """
        spec = self.profile.spec(key)
        if spec is None:
            return None
        value, origin = self._first(spec, msg, ctx, k, at or {})
        if origin is not None:
            ctx.origins.setdefault(key, origin)
        if value is None and spec.otherwise == "received":
            value = ctx.local_naive(ctx.received_at).replace(microsecond=0)
        if spec.required and (value is None or value in ("", HL7_NULL)):
            paths = ", ".join(str(s.path) for s in spec.sources)
            raise InvalidInput(f"{key} missing: none of {paths} has a value", location=key, missing=True)
        return value

    def _first(self, spec: FieldSpec, msg, ctx: Context, k: int, at: dict[str, int]):
        kind, fn = TRANSFORMS[spec.transform]
        for source in spec.sources:
            p = source.path
            occ = _occurrence(msg, p.segment, k, at)
            if p.rep is None:   # every repetition, each read as a single value would be (regex, table, transform)
                values = []
                for rep in range(1, len(msg.values(p.segment, p.field, 1, 1, occ)) + 1):
                    one = self._one(dataclasses.replace(source, path=dataclasses.replace(p, rep=rep)), spec, msg,
                                    ctx, k, at, occ)
                    values.extend(one if isinstance(one, tuple) else [] if one in (None, "", HL7_NULL) else [one])
                if values:
                    return tuple(dict.fromkeys(values)), p.location
                continue
            value = self._one(source, spec, msg, ctx, k, at, occ)
            if value == HL7_NULL:
                return HL7_NULL, p.location
            if value not in (None, ""):
                return value, p.location
        if spec.default is not None:
            value = fn(spec.default, ctx) if kind != "field" else \
                FROM_TEXT[spec.transform](spec.default, ctx) if spec.transform in FROM_TEXT else spec.default
            if value not in (None, ""):
                return value, None
        return None, None

    def _one(self, source: Source, spec: FieldSpec, msg, ctx: Context, k: int, at: dict[str, int], occ: int):
        """The value one source (of one repetition) gives: the field read by a field transform, or its text
        narrowed by the regex, looked up in the table and read by the transform; None when it has none."""
        kind, fn = TRANSFORMS[spec.transform]
        if kind == "field" and not source.table:
            return fn(msg, source.path, occ, ctx) or None
        raw = self._raw(source, msg, k, at)
        if not raw or raw == HL7_NULL:
            return raw or None
        if source.table:
            raw = self.lookup(source, raw)
            if raw is None:
                return None
        return FROM_TEXT[spec.transform](raw, ctx) if kind == "field" else fn(raw, ctx)

    @staticmethod
    def _raw(source: Source, msg, k: int, at: dict[str, int]) -> str:
        """The text a source reads: its field (narrowed by its regex), or its fields joined."""
        if source.concat:
            parts = [msg.value(p.segment, p.field, p.rep, p.comp, p.sub, _occurrence(msg, p.segment, k, at)).strip()
                     for p in source.concat]
            raw = source.separator.join(part for part in parts if part and part != HL7_NULL)
        else:
            p = source.path
            raw = msg.value(p.segment, p.field, p.rep, p.comp, p.sub, _occurrence(msg, p.segment, k, at)).strip()
        if source.regex is not None and raw:
            m = source.regex.search(raw)
            raw = (m.group(1) if m.groups() else m.group(0)) if m else ""
        return raw

    def lookup(self, source: Source, code: str) -> str | None:
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
                          location=source.path.location)

    def identifier(self, policy: IdentifierPolicy, path: FieldPath, msg, k: int = 1) -> tuple[str, str]:
        """(identifier, issuer) from the repetition of the CX field ``path`` the policy chooses
        (CX-1 ID number, CX-4.1 assigning authority, CX-5 identifier type code; HL7 v2.5.1 chapter 2A, data type CX)."""
        occ = _occurrence(msg, path.segment, k, {})
        candidates = []
        for rep in range(1, len(msg.values(path.segment, path.field, 1, 1, occ)) + 1):
            number = msg.value(path.segment, path.field, rep, 1, 1, occ).strip()
            if number and number != HL7_NULL:
                candidates.append((number, msg.value(path.segment, path.field, rep, 4, 1, occ).strip(),
                                   msg.value(path.segment, path.field, rep, 5, 1, occ).strip()))
        for authority in policy.authorities or (None,):
            for id_type in policy.types or (None,):
                for number, assigner, kind in candidates:
                    if authority in (None, assigner) and id_type in (None, kind):
                        return number, assigner or policy.issuer
        if candidates and policy.otherwise == "first":
            number, assigner, _ = candidates[0]
            return number, assigner or policy.issuer
        wanted = []
        if policy.authorities:
            wanted.append(f"assigning authority {' or '.join(policy.authorities)}")
        if policy.types:
            wanted.append(f"identifier type {' or '.join(policy.types)}")
        raise InvalidInput(f"profile {self.profile.name!r}: no {path.location} repetition with "
                           f"{' and '.join(wanted)}", location=path.location, missing=True)

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
            patient_id, issuer = self.identifier(policy, policy.field, msg, k)
            ctx.origins.setdefault("patient.id", policy.field.location)
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
            return PatientRef(*self.identifier(policy, PRIOR_IDENTIFIERS, msg, k))
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
            ctx.warnings.append(f"appointment duration {raw_duration!r} is not a number: ignored")
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

    def order_ref(self, msg, ctx: Context) -> OrderRef:
        return OrderRef(
            placer_order_number=self.text("order.placer_order_number", msg, ctx),
            placer_issuer=self.text("order.placer_issuer", msg, ctx),
            filler_order_number=self.text("order.filler_order_number", msg, ctx),
            accession_number=self.text("order.accession_number", msg, ctx),
        )

    def order_commands(self, msg, ctx: Context) -> MappingResult:
        if not _count(msg, "ORC") and not _count(msg, "OBR"):
            raise InvalidInput("order message without ORC and OBR segments", location="ORC", missing=True)
        control = self.text("order.control", msg, ctx)
        action = self.profile.order_controls.get(control)
        if action is None:
            known = ", ".join(sorted(self.profile.order_controls))
            raise Unsupported(f"unsupported order control {control!r} (profile {self.profile.name!r} handles "
                              f"{known})", location="order.control")
        ref = self.order_ref(msg, ctx)
        step_status = self.profile.step_status(control, self.text("order.status", msg, ctx))
        if action == "status" and step_status:
            return MappingResult([SetStepStatus(ref, step_status)], action)
        if action == "status":
            status = self.text("order.status", msg, ctx)
            action = self.profile.status_changes.get(status)
            if action is None:
                ctx.warnings.append(f"status change to {status or '(empty)'} recorded; it changes nothing here")
                return MappingResult([], "status")
        if action in ("hold", "release"):
            return MappingResult([HoldOrder(ref=ref, release=action == "release")], action)
        if action in ("cancel", "discontinue"):
            cmd = CancelOrder(ref=ref, discontinue=action == "discontinue",
                              reason=self.text("order.reason", msg, ctx))
            return MappingResult([cmd], action)
        order = OrderData(
            ref=ref,
            accession_number=ref.accession_number,
            priority=self.text("order.priority", msg, ctx),
            referring_physician=self.text("order.referring_physician", msg, ctx),
            requesting_physician=self.text("order.requesting_physician", msg, ctx),
            reason=self.text("order.reason", msg, ctx),
            procedures=tuple(self.procedure(msg, ctx, k) for k in range(1, max(1, _count(msg, "OBR")) + 1)),
        )
        patient = self.patient(msg, ctx)
        cmd = PlaceOrder(patient, order) if action == "place" else UpdateOrder(patient, order)
        return MappingResult([cmd, *([SetStepStatus(ref, step_status)] if step_status else [])], action)

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
        """The k-th OBR's requested procedure; one step per IPC segment of its group (OMI^O23,
        HL7 v2.5.1 4.4.10), else one step."""
        code = self.text("procedure.code_value", msg, ctx, k)
        ipcs = _group_occurrences(msg, "IPC", k)
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
