"""Read model of reports (app.services.reports explains what a row means): for the order's API answer and page."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.models import Report


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
