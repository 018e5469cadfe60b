"""Read side of reports (app.models.Report), for the edges that show them (FHIR DiagnosticReport).

Which requested procedure a report is about: the one it names (``procedure_fk``, reports written here), else the
procedure of its order with the report's Study Instance UID, else the order's first (a report received by ORU^R01
names only the order, HL7 v2.5.1 7.4.1). Its patient is its order's. Each is given as a function of one row and
as an SQL expression of the same rule, for searches. Writing and signing reports is app.services.reports.
"""

from __future__ import annotations

from sqlalchemy import func, select

from app.models import Order, Report, ReportState, RequestedProcedure

# Reports whose text may leave the department: received (ORU) or signed here; a DRAFT is not released.
RELEASED = (ReportState.PRELIMINARY, ReportState.FINAL, ReportState.AMENDED)


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
