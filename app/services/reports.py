"""Reports: received ones (ORU^R01 from another system) kept with their order, and reports written here - drafted,
signed preliminary or final, completed by addenda and corrected by amendments - with the procedure's lifecycle and
the result sent to the HIS (ORU^R01, HL7 v2.5.1 chapter 7; IHE RAD TF-2 4.3 feedback).

What a :class:`app.models.Report` row means (the FHIR DiagnosticReport read side is built from this):

- ``state`` NULL: a report *received* (ORU^R01, :func:`record_report`); its ``status`` is the sender's OBR-25/OBX-11
  (HL7 table 0123: P preliminary, F final, C correction, ...) and ``observed_at`` its OBR-7.
- ``state`` set: a report *written here*. ``kind`` says what it is:
  ``report`` - the report of one requested procedure (``procedure_fk``); at most one that is not AMENDED per
  procedure. ``addendum`` - text added to a signed final report (``parent_fk``), which stays valid.
  ``amendment`` - a corrected version replacing a final report or amendment (``parent_fk``): once signed, the
  parent is AMENDED and the amendment is the procedure's current report.
- ``state`` (table :data:`TRANSITIONS`): DRAFT (being written; text may change) -> PRELIMINARY (signed preliminary;
  only ``kind`` report) -> FINAL (signed final; text fixed) -> AMENDED (replaced by a signed amendment). Signing sets
  ``signed_by`` (user name), ``signed_at`` (UTC) and ``status`` to the HL7 result status sent: P, F, or C for a
  signed addendum or amendment (it corrects the final result the receiver holds).
- The current result of a procedure is its newest FINAL ``report`` or ``amendment`` (with the FINAL addenda whose
  ``parent_fk`` is it), else its PRELIMINARY report. DiagnosticReport.status: DRAFT registered, PRELIMINARY
  preliminary, FINAL final (appended once it has a FINAL addendum; an amendment's own status is amended), AMENDED
  amended - superseded (its replacement names it in ``parent_fk``).

The procedure follows (app.services.lifecycle): signing the report preliminary moves it COMPLETED -> PRELIMINARY,
final COMPLETED or PRELIMINARY -> FINAL; addenda and amendments keep it FINAL. Every refused change (signing twice,
writing the report of a procedure not completed, changing a signed text) raises Conflict naming the current state,
before anything is changed. Signing writes one outbox row of kind :data:`REPORT` per destination in the same
unit of work (rendered as ORU^R01 by interfaces.hl7.writer.report_message).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.commands import Cause, RecordReport
from app.errors import Conflict, InvalidInput, NotFound
from app.models import ProcedureState, Report, ReportState, RequestedProcedure, utcnow
from app.services import lifecycle, outbox
from app.services.orders import find_order
from app.validation import clip

REPORT = "report"          # outbox kind: a signed report, for the HIS (ORU^R01)
KINDS = ("report", "addendum", "amendment")
TRANSITIONS: dict[ReportState, frozenset[ReportState]] = {
    ReportState.DRAFT: frozenset({ReportState.PRELIMINARY, ReportState.FINAL}),
    ReportState.PRELIMINARY: frozenset({ReportState.FINAL}),
    ReportState.FINAL: frozenset({ReportState.AMENDED}),
    ReportState.AMENDED: frozenset(),
}
MAX_TEXT = 100_000


# Received reports ------------------------------------------------------------------------------
def record_report(session: Session, command: RecordReport) -> Report:
    """An ORU^R01 from another system: kept with the order it names, or unlinked."""
    order = find_order(session, command.ref)
    report = Report(order=order, accession_number=clip(command.ref.accession_number, 16),
                    placer_order_number=clip(command.ref.placer_order_number, 64),
                    filler_order_number=clip(command.ref.filler_order_number, 64),
                    study_instance_uid=clip(command.study_instance_uid, 64), status=clip(command.status, 16),
                    text=command.text, observed_at=command.observed_at)
    session.add(report)
    session.flush()
    return report


# Written reports -------------------------------------------------------------------------------
def find_report(session: Session, report_id: int) -> Report:
    report = session.get(Report, report_id)
    if report is None:
        raise NotFound(f"no report {report_id}", location="report_id")
    return report


def _text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("the report text is empty", location="report.text", missing=True)
    if len(text) > MAX_TEXT:
        raise InvalidInput(f"the report text is longer than {MAX_TEXT} characters", location="report.text")
    if "\x00" in text:
        raise InvalidInput("the report text contains a NUL character", location="report.text")
    return text.replace("\r\n", "\n").strip("\n")


def _who(name: str, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("who writes or signs the report is not known (sign in, or name the author)",
                           location=where, missing=True)
    return clip(name.strip(), 64)


def describe(report: Report) -> str:
    what = {"report": "report", "addendum": "addendum", "amendment": "amendment"}.get(report.kind, "report")
    return f"{what} {report.id}"


def _current(session: Session, proc: RequestedProcedure) -> Report | None:
    """The procedure's report or amendment that is not AMENDED (its current one), newest first."""
    return session.scalars(select(Report).where(
        Report.procedure_fk == proc.id, Report.kind.in_(("report", "amendment")), Report.state.is_not(None),
        Report.state != ReportState.AMENDED).order_by(Report.id.desc())).first()


def create_report(session: Session, procedure_id: int, text: str, author: str, cause: Cause) -> Report:
    """A DRAFT report for a COMPLETED procedure; Conflict when the procedure is in another state or already has one."""
    proc = session.get(RequestedProcedure, procedure_id)
    if proc is None:
        raise NotFound(f"no requested procedure {procedure_id}", location="procedure_id")
    body, author = _text(text), _who(author, "report.author")
    if proc.state is not ProcedureState.COMPLETED:
        raise Conflict(f"{lifecycle.describe(proc)} is {proc.state.value}; cannot write its report (a report is "
                       "written once the procedure is COMPLETED)", location="procedure.state")
    existing = _current(session, proc)
    if existing is not None:
        raise Conflict(f"{lifecycle.describe(proc)} already has {describe(existing)} ({existing.state.value}); "
                       "change or sign that one", location="procedure.report")
    return _new(session, proc, "report", body, author, parent=None)


def _new(session: Session, proc: RequestedProcedure, kind: str, text: str, author: str,
         parent: Report | None) -> Report:
    order = proc.order
    report = Report(order=order, procedure=proc, kind=kind, parent=parent, state=ReportState.DRAFT, text=text,
                    author=author, accession_number=order.accession_number[:16],
                    placer_order_number=order.placer_order_number, filler_order_number=order.filler_order_number,
                    study_instance_uid=proc.study_instance_uid, status="")
    session.add(report)
    session.flush()
    return report


def edit_draft(session: Session, report_id: int, text: str, author: str) -> Report:
    """Change the text of a DRAFT (the author becomes whoever changed it last)."""
    report = _written(session, report_id)
    body, author = _text(text), _who(author, "report.author")
    if report.state is not ReportState.DRAFT:
        raise Conflict(f"{describe(report)} is {report.state.value}; its text can no longer change (write an "
                       "addendum or an amendment)", location="report.state")
    report.text, report.author = body, author
    session.flush()
    return report


def _written(session: Session, report_id: int) -> Report:
    report = find_report(session, report_id)
    if report.state is None:
        raise Conflict(f"report {report_id} was received from {report.accession_number or 'another system'} "
                       "(ORU^R01); only reports written here can be changed", location="report.state")
    return report


def sign(session: Session, report_id: int, signer: str, cause: Cause, *, preliminary: bool = False) -> Report:
    """Sign a report: DRAFT -> PRELIMINARY or FINAL, PRELIMINARY -> FINAL (HL7 table 0123 P / F); an addendum or
    amendment is signed final only. The procedure moves with it and the ORU^R01 goes to the outbox. Every check is
    made before anything changes."""
    report = _written(session, report_id)
    signer = _who(signer, "report.signed_by")
    target = ReportState.PRELIMINARY if preliminary else ReportState.FINAL
    if report.kind != "report" and preliminary:
        raise Conflict(f"{describe(report)} is an {report.kind}: it is signed final, not preliminary",
                       location="report.kind")
    if target not in TRANSITIONS[report.state]:
        again = " again" if report.state is target else ""
        raise Conflict(f"{describe(report)} is {report.state.value}; cannot sign it {target.value.lower()}{again}",
                       location="report.state")
    proc = report.procedure
    parent = report.parent
    if report.kind == "report":
        lifecycle.check(proc, ProcedureState(target.value), action=f"sign its report {target.value.lower()}")
    else:
        if proc.state is not ProcedureState.FINAL:
            raise Conflict(f"{lifecycle.describe(proc)} is {proc.state.value}; an {report.kind} is signed for a "
                           "FINAL report", location="procedure.state")
        if parent is None or parent.state is not ReportState.FINAL:
            about = f"{describe(parent)}, which is {parent.state.value}" if parent is not None else "no report"
            raise Conflict(f"{describe(report)} is for {about}; cannot sign it", location="report.parent")
    report.state, report.signed_by, report.signed_at = target, signer, utcnow()
    report.status = "P" if preliminary else ("F" if report.kind == "report" else "C")
    if report.kind == "amendment":
        parent.state = ReportState.AMENDED
    if report.kind == "report":
        lifecycle.transition(session, proc, ProcedureState(target.value), cause,
                             note=f"{describe(report)} signed by {signer}")
    session.flush()
    if outbox.destinations_for(session, REPORT):
        outbox.enqueue(session, REPORT, report_snapshot(report), cause, order=report.order)
    return report


def add_addendum(session: Session, report_id: int, text: str, author: str, cause: Cause) -> Report:
    """A DRAFT addendum to a FINAL report or amendment (which stays valid)."""
    return _follow_up(session, report_id, "addendum", text, author)


def amend(session: Session, report_id: int, text: str, author: str, cause: Cause) -> Report:
    """A DRAFT amendment of a FINAL report or amendment: when signed, it replaces it (the parent is AMENDED)."""
    return _follow_up(session, report_id, "amendment", text, author)


def _follow_up(session: Session, report_id: int, kind: str, text: str, author: str) -> Report:
    parent = _written(session, report_id)
    body, author = _text(text), _who(author, "report.author")
    if parent.kind == "addendum":
        raise Conflict(f"{describe(parent)} is an addendum; write the {kind} for {describe(parent.parent)}",
                       location="report.kind")
    if parent.state is not ReportState.FINAL:
        doing = "add an addendum to it" if kind == "addendum" else "amend it"
        raise Conflict(f"{describe(parent)} is {parent.state.value}; cannot {doing} (only a FINAL report can be)",
                       location="report.state")
    return _new(session, parent.procedure, kind, body, author, parent=parent)


def report_snapshot(report: Report) -> dict:
    """What the ORU^R01 of a signed report says, as plain data (the outbox payload; interfaces.hl7.writer)."""
    order, proc = report.order, report.procedure
    text = report.text
    if report.kind == "addendum" and report.parent is not None:
        text = (f"{report.parent.text}\n\nADDENDUM ({report.signed_by}, "
                f"{report.signed_at:%Y-%m-%d %H:%M} UTC):\n{report.text}")
    completed = [t.at for t in proc.transitions if t.to_state is ProcedureState.COMPLETED]
    step = proc.steps[0] if proc.steps else None
    patient = order.patient
    return {
        "report_id": report.id, "kind": report.kind, "result_status": report.status, "text": text,
        "signed_by": report.signed_by, "signed_by_name": "",
        "signed_at": report.signed_at.isoformat() if report.signed_at else "",
        "performed_at": completed[-1].isoformat() if completed else "",
        "order_id": order.id, "placer_order_number": order.placer_order_number, "placer_issuer": order.placer_issuer,
        "filler_order_number": order.filler_order_number, "accession_number": order.accession_number,
        "sender": order.sender,
        "patient": {"patient_id": patient.patient_id, "issuer": patient.issuer, "name": patient.name,
                    "birth_date": patient.birth_date.isoformat() if patient.birth_date else "", "sex": patient.sex},
        "procedure": {"requested_procedure_id": proc.requested_procedure_id,
                      "study_instance_uid": proc.study_instance_uid, "code_value": proc.code_value,
                      "code_scheme": proc.code_scheme, "code_meaning": proc.code_meaning,
                      "description": proc.description, "modality": step.modality if step else ""},
    }
