"""Reports received for orders (ORU^R01): kept with the order they name, or unlinked."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.commands import RecordReport
from app.models import Report
from app.services.orders import find_order
from app.validation import clip


def record_report(session: Session, command: RecordReport) -> Report:
    order = find_order(session, command.ref)
    report = Report(order=order, accession_number=clip(command.ref.accession_number, 16),
                    placer_order_number=clip(command.ref.placer_order_number, 64),
                    filler_order_number=clip(command.ref.filler_order_number, 64),
                    study_instance_uid=clip(command.study_instance_uid, 64), status=clip(command.status, 16),
                    text=command.text, observed_at=command.observed_at)
    session.add(report)
    session.flush()
    return report
