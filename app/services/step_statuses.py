"""The Scheduled Procedure Step Status (0040,0020) an order message asks for (DICOM PS3.3 C.4.10).

A mapping profile's ``step_statuses`` table turns an order control and order status (HL7 v2.5.1 ORC-1, table 0119;
ORC-5, table 0038) into the status of the order's steps before they are performed: SCHEDULED, HELD, ARRIVED or
READY, the statuses that decide whether and how the worklist offers a step (IHE RAD TF-2 4.5: only steps a
modality may start are offered). Performed, completed and discontinued steps are the modality's business (MPPS,
app.services.tracking) and cancelled ones the order control's (CA, DC: app.services.orders.cancel); they never
change here.

- HELD: the order is put on hold as by ORC-1 HD (app.services.orders.hold_order): its scheduled steps are HELD.
- SCHEDULED: an order on hold is released as by ORC-1 RL; a scheduled order stays as it is.
- ARRIVED, READY: the patient is here (as ADT A10 says, app.services.tracking.patient_arrived): the open steps
  take the status and each SCHEDULED procedure moves to ARRIVED.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.commands import Cause, HoldOrder, SetStepStatus
from app.errors import Conflict, InvalidInput, NotFound
from app.models import Order, OrderStatus, ProcedureState, StepStatus
from app.services import lifecycle
from app.services.orders import find_order, hold_order

SETTABLE = (StepStatus.SCHEDULED, StepStatus.HELD, StepStatus.ARRIVED, StepStatus.READY)
_PRESENT = (StepStatus.SCHEDULED, StepStatus.ARRIVED, StepStatus.READY)


def set_step_status(session: Session, command: SetStepStatus, cause: Cause) -> Order:
    try:
        target = StepStatus(command.status)
    except ValueError:
        target = None
    if target not in SETTABLE:
        raise InvalidInput(f"step status {command.status!r} cannot be set by an order message (one of "
                           f"{', '.join(s.value for s in SETTABLE)})", location="order.status")
    order = find_order(session, command.ref)
    if order is None:
        raise NotFound(f"unknown order: {command.ref.describe()}", location="order.placer_order_number")
    if target is StepStatus.HELD:
        return order if order.status is OrderStatus.HELD else hold_order(session, HoldOrder(command.ref), cause)
    if order.status is OrderStatus.HELD:
        if target is StepStatus.SCHEDULED:
            return hold_order(session, HoldOrder(command.ref, release=True), cause)
        raise Conflict(f"order {order.accession_number} is on hold; release it (RL) before its steps can be "
                       f"{target.value}", location="order.status")
    if order.status is not OrderStatus.SCHEDULED:
        raise Conflict(f"order {order.accession_number} is {order.status.value}; its steps cannot be "
                       f"{target.value}", location="order.status")
    if target is StepStatus.SCHEDULED:
        return order
    for proc in order.procedures:
        steps = [s for s in proc.steps if s.status in _PRESENT]
        for step in steps:
            step.status = target
        if steps and proc.state is ProcedureState.SCHEDULED:
            lifecycle.transition(session, proc, ProcedureState.ARRIVED, cause, note=f"order status: {target.value}")
    session.flush()
    return order
