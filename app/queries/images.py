"""Read model of a stored study for the image viewer: its series and instances, in display order."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.models import Instance, Series, Study


def _number(text: str) -> tuple[int, str]:
    return (int(text), text) if text.strip().lstrip("-").isdigit() else (2**31, text)


def study_images(session: Session, study_uid: str) -> dict | None:
    """The study with each series (by series number) and its instances (by instance number)."""
    study = session.scalars(select(Study).where(Study.study_instance_uid == study_uid)
                            .options(selectinload(Study.series).selectinload(Series.instances))).first()
    if study is None:
        return None
    series = sorted(study.series, key=lambda s: (_number(s.series_number), s.id))
    return {
        "study_instance_uid": study.study_instance_uid, "patient_id": study.patient_id,
        "patient_name": study.patient_name, "study_date": study.study_date, "description": study.description,
        "accession_number": study.accession_number, "order_id": study.order_fk,
        "series": [{"series_instance_uid": s.series_instance_uid, "modality": s.modality, "number": s.series_number,
                    "description": s.description,
                    "instances": [{"sop_instance_uid": i.sop_instance_uid, "number": i.instance_number}
                                  for i in sorted(s.instances, key=lambda i: (_number(i.instance_number), i.id))]}
                   for s in series],
    }


def instance_file(session: Session, sop_uid: str) -> dict | None:
    """Where an instance is in the archive, with its study's patient (for the audit trail)."""
    row = session.execute(select(Instance.path, Study.patient_id, Study.study_instance_uid)
                          .join(Series, Instance.series_fk == Series.id).join(Study, Series.study_fk == Study.id)
                          .where(Instance.sop_instance_uid == sop_uid)).first()
    return None if row is None else {"path": row.path, "patient_id": row.patient_id, "study_instance_uid": row[2]}
