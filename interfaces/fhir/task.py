"""Task (FHIR R4 task.html) = a Scheduled Procedure Step, read and search only.

Following the HL7 FHIR Imaging ServiceRequest IG (Task "DICOM MWL Scheduled Procedure Step Mapping"):
one Task per scheduled procedure step, ``basedOn`` the ServiceRequest of its requested procedure, ``for`` the patient, ``code`` the modality (DICOM),
``executionPeriod.start`` the scheduled start (site time with its offset), ``owner`` the scheduled
station AE titles. Status from the step (DICOM PS3.3 C.4.10 plus the engine's HELD/CANCELLED):
SCHEDULED accepted, HELD on-hold, ARRIVED/READY ready, STARTED/IN_PROGRESS in-progress (MPPS),
COMPLETED completed, DISCONTINUED failed, CANCELLED cancelled.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app.models import Order, ProcedureStep, RequestedProcedure, StepStatus
from interfaces.fhir.datatypes import DCM, Context, site_instant, utc_instant
from interfaces.fhir.kinds import Kind
from interfaces.fhir.patient import patient_reference
from interfaces.fhir.search import SearchParam, date_clause, reference_param, token

STATUS = {StepStatus.SCHEDULED: "accepted", StepStatus.HELD: "on-hold", StepStatus.ARRIVED: "ready",
          StepStatus.READY: "ready", StepStatus.STARTED: "in-progress", StepStatus.IN_PROGRESS: "in-progress",
          StepStatus.COMPLETED: "completed", StepStatus.DISCONTINUED: "failed", StepStatus.CANCELLED: "cancelled"}


class TaskKind(Kind):
    name = "Task"
    model = ProcedureStep
    documentation = "Scheduled procedure steps of the orders (read-only; they follow MPPS)."

    def joined(self, stmt):
        return stmt.join(ProcedureStep.procedure).join(RequestedProcedure.order)

    def query(self):
        return (self.joined(select(ProcedureStep))
                .options(selectinload(ProcedureStep.stations),
                         selectinload(ProcedureStep.procedure).selectinload(RequestedProcedure.order)
                         .selectinload(Order.patient)))

    def own_params(self) -> list[SearchParam]:
        def status(value, _m, _ctx):
            return ProcedureStep.status.in_([s for s, code in STATUS.items() if code == token(value)[1]])

        return [
            reference_param("based-on", "ServiceRequest", ProcedureStep.procedure_fk,
                            "The requested procedure (ServiceRequest/<id>)",
                            "http://hl7.org/fhir/SearchParameter/Task-based-on"),
            reference_param("patient", "Patient", Order.patient_fk, "The patient (Patient/<id>)",
                            "http://hl7.org/fhir/SearchParameter/Task-patient"),
            SearchParam("status", "token", "accepted, on-hold, ready, in-progress, completed, failed, cancelled",
                        status, definition="http://hl7.org/fhir/SearchParameter/Task-status"),
            SearchParam("identifier", "token", "Scheduled Procedure Step ID",
                        lambda v, _m, _c: ProcedureStep.sps_id == token(v)[1],
                        definition="http://hl7.org/fhir/SearchParameter/Task-identifier"),
            SearchParam("code", "token", "Modality (DICOM code, e.g. CT)",
                        lambda v, _m, _c: ProcedureStep.modality == token(v)[1],
                        definition="http://hl7.org/fhir/SearchParameter/Task-code"),
            SearchParam("period", "date", "Scheduled start of the step (executionPeriod.start; site time unless an "
                        "offset is given)",
                        lambda v, _m, ctx: date_clause(ProcedureStep.scheduled_start, v, utc=False, site_tz=ctx.site_tz),
                        definition="http://hl7.org/fhir/SearchParameter/Task-period",
                        sort=ProcedureStep.scheduled_start),
            SearchParam("authored-on", "date", "When the order was received (UTC unless an offset is given)",
                        lambda v, _m, _c: date_clause(Order.created_at, v, utc=True),
                        definition="http://hl7.org/fhir/SearchParameter/Task-authored-on", sort=Order.created_at),
            SearchParam("modified", "date", "When the step last changed (lastModified, UTC unless an offset is "
                        "given)", lambda v, _m, _c: date_clause(ProcedureStep.updated_at, v, utc=True),
                        definition="http://hl7.org/fhir/SearchParameter/Task-modified", sort=ProcedureStep.updated_at),
        ]

    def render(self, step: ProcedureStep, ctx: Context) -> dict:
        proc = step.procedure
        order = proc.order
        resource = {
            "resourceType": "Task", "id": str(step.id), "meta": self.meta(step),
            "identifier": [{"type": {"text": "Scheduled Procedure Step ID"}, "value": step.sps_id}],
            "basedOn": [{"reference": f"ServiceRequest/{proc.id}"}],
            "status": STATUS[step.status], "intent": "order",
            "code": {"coding": [{"system": DCM, "code": step.modality}]},
            "focus": {"reference": f"ServiceRequest/{proc.id}"},
            "for": patient_reference(order.patient),
            "authoredOn": utc_instant(order.created_at),
            "executionPeriod": {"start": site_instant(step.scheduled_start, ctx.site_tz)},
            "lastModified": utc_instant(step.updated_at),
        }
        text = step.description or proc.description
        if text:
            resource["description"] = text
            resource["code"]["text"] = text
        if step.station_aets or step.station_name:
            resource["owner"] = {"display": ", ".join(step.station_aets) or step.station_name}
        return resource
