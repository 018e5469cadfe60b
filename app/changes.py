"""What a unit of work changed: entities created and updated, with values before and after.

:class:`ChangeRecorder` listens to one session's flushes and keeps a JSON-ready list, stored with
the message that caused the changes so an analyst can see what each message did. Bulk updates
(e.g. moving orders in a merge) are not seen by flush events; the services that use them say so
with :func:`note`.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session

IGNORED_TABLES = {"inbound_messages"}
_NOTES_KEY = "ris.change_notes"


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return value


def note(session: Session, entry: dict) -> None:
    """Record a change the flush events cannot see (a bulk UPDATE)."""
    session.info.setdefault(_NOTES_KEY, []).append(entry)


_RECORDER_KEY = "ris.change_recorder"


class ChangeRecorder:
    """Records what the session's flushes change until :meth:`close` (one listener for every session, below:
    registering a listener per unit of work costs more than the unit of work on the intake's hot path)."""

    def __init__(self, session: Session):
        self.session = session
        self.changes: list[dict] = []
        session.info[_NOTES_KEY] = self.changes
        session.info[_RECORDER_KEY] = self

    def close(self) -> list[dict]:
        self.session.info.pop(_RECORDER_KEY, None)
        self.session.info.pop(_NOTES_KEY, None)
        return self.changes

    def _after_flush(self, session: Session, _context) -> None:
        for obj in session.new:
            table = getattr(obj, "__tablename__", "")
            if table in IGNORED_TABLES:
                continue
            state = inspect(obj)
            values = {c.key: _plain(state.attrs[c.key].value) for c in state.mapper.column_attrs}
            self.changes.append({"action": "created", "entity": table, "id": state.identity and state.identity[0],
                                 "values": values})
        for obj in session.dirty:
            table = getattr(obj, "__tablename__", "")
            if table in IGNORED_TABLES or not session.is_modified(obj, include_collections=False):
                continue
            state = inspect(obj)
            changed = {}
            for column in state.mapper.column_attrs:
                history = state.attrs[column.key].history
                if history.has_changes() and column.key != "updated_at":
                    before = history.deleted[0] if history.deleted else None
                    after = history.added[0] if history.added else None
                    changed[column.key] = [_plain(before), _plain(after)]
            if changed:
                self.changes.append({"action": "updated", "entity": table, "id": state.identity and state.identity[0],
                                     "changes": changed})


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, context) -> None:
    recorder = session.info.get(_RECORDER_KEY)
    if recorder is not None and (session.new or session.dirty):
        recorder._after_flush(session, context)
