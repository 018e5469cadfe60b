"""Read side of reports (app.models.Report; app.services.reports explains what a row means and writes and signs
them): the order's API answer and page, and the edges that show them (FHIR DiagnosticReport).

Which requested procedure a report is about: the one it names (``procedure_fk``, reports written here), else the
procedure of its order with the report's Study Instance UID, else the order's first (a report received by ORU^R01
names only the order, HL7 v2.5.1 7.4.1). Its patient is its order's. Each is given as a function of one row and
as an SQL expression of the same rule, for searches.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from app.models import Order, Report, ReportState, RequestedProcedure

# Reports whose text may leave the department: received (ORU) or signed here; a DRAFT is not released.
RELEASED = (ReportState.PRELIMINARY, ReportState.FINAL, ReportState.AMENDED)


def _iso(value):
    return value.isoformat() if value is not None else None


def report_view(report: Report) -> dict:
    """One report: ``written`` False for one received by ORU^R01 (then only status, text and observed_at mean
    something)."""
    return {
        "id": report.id, "order_id": report.order_fk, "written": report.state is not None, "kind": report.kind,
        "state": report.state.value if report.state is not None else None, "status": report.status,
        "procedure": report.procedure.requested_procedure_id if report.procedure is not None else None,
        "procedure_id": report.procedure_fk, "parent_id": report.parent_fk, "text": report.text,
        "author": report.author, "signed_by": report.signed_by, "signed_at": _iso(report.signed_at),
        "observed_at": _iso(report.observed_at), "study_instance_uid": report.study_instance_uid,
        "created_at": _iso(report.created_at), "updated_at": _iso(report.updated_at),
    }


def order_reports(session: Session, order_id: int) -> list[dict]:
    """The reports of an order, written and received, oldest first."""
    rows = session.scalars(select(Report).where(Report.order_fk == order_id).options(selectinload(Report.procedure))
                           .order_by(Report.id))
    return [report_view(r) for r in rows]


def get_report(session: Session, report_id: int) -> dict | None:
    report = session.get(Report, report_id)
    return report_view(report) if report is not None else None


def procedure_of(report: Report) -> RequestedProcedure | None:
    if report.procedure is not None:
        return report.procedure
    order = report.order
    if order is None or not order.procedures:
        return None
    return next((p for p in order.procedures if report.study_instance_uid
                 and p.study_instance_uid == report.study_instance_uid), order.procedures[0])


def released(report: Report) -> bool:
    return report.state is None or report.state in RELEASED


PROCEDURE_KEY = func.coalesce(
    Report.procedure_fk,
    select(func.min(RequestedProcedure.id)).where(RequestedProcedure.order_fk == Report.order_fk,
                                                  RequestedProcedure.study_instance_uid == Report.study_instance_uid)
    .correlate_except(RequestedProcedure).scalar_subquery(),
    select(func.min(RequestedProcedure.id)).where(RequestedProcedure.order_fk == Report.order_fk)
    .correlate_except(RequestedProcedure).scalar_subquery())

PATIENT_KEY = func.coalesce(
    select(Order.patient_fk).where(Order.id == Report.order_fk).correlate_except(Order).scalar_subquery(),
    select(Order.patient_fk).join(RequestedProcedure, RequestedProcedure.order_fk == Order.id)
    .where(RequestedProcedure.id == Report.procedure_fk).correlate_except(Order, RequestedProcedure)
    .scalar_subquery())


def patient_key(report: Report) -> int | None:
    order = report.order or (report.procedure.order if report.procedure is not None else None)
    return order.patient_fk if order is not None else None
