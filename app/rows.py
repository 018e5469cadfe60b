"""Row operations for the hot paths of the core: Core statements, compiled once, run on the session's connection.

The HL7 intake applies thousands of small changes per second (issue "HL7 v2 intake", target 2,000 msg/s). Measured
on these machines (docs/performance.md): the ORM's unit of work costs about half a millisecond per flushed object,
building a select another 0.1-0.3 ms; executing a prebuilt Core statement 25-60 us, of which the database itself
needs 4-6 us. So the services on the intake path (patients, visits, orders, the message store) use statements that
are built once at import and compiled once per database dialect (:class:`_Plan`), and run them on the DBAPI
connection of the session's own transaction with SQLAlchemy's type processing applied by hand (bind processors
for values, result processors for rows). Statements with expanding IN parameters go through ``Session.execute``.

The rest of the engine keeps using ORM objects in the same session. Three rules keep both views honest:

* pending ORM changes are flushed before a statement runs here (:func:`read` etc.), so Core sees them;
* every row changed here is expired from the session's identity map (:func:`changed`), so an ORM object loaded
  before reloads the new values, and a parent's collection that gained a child is expired
  (:func:`children_changed`);
* what a change did is noted for the message store (app.changes) in the shape the ORM change recorder uses
  ("created" with values, "updated" with [before, after] per column), and versions of patients and orders are
  bumped explicitly (the ORM listener in app.models sees only ORM flushes).
"""

from __future__ import annotations

import collections
import datetime as dt
import enum
from typing import Any, Iterable

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key
from sqlalchemy.sql import Insert, Select

from app.changes import note


def plain(value: Any) -> Any:
    """A JSON-ready copy of a column value (as app.changes records them)."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return value


# The fast lane ---------------------------------------------------------------------------------------------------
class _Plan:
    """One statement compiled for one dialect: its SQL, how to pass its parameters, how to read its rows."""

    __slots__ = ("sql", "names", "binds", "ordered", "fixed", "prefetch", "columns", "results", "row", "defaults",
                 "expanding")

    def __init__(self, stmt, dialect):
        compiled = stmt.compile(dialect=dialect)
        # IN (:list) parameters are rendered at execution time: such statements run through Session.execute
        self.expanding = any(bp.expanding for bp in compiled.binds.values())
        self.sql = compiled.string
        self.names = list(compiled.positiontup) if compiled.positiontup is not None else None
        self.binds = {name: bp.type.dialect_impl(dialect).bind_processor(dialect) for name, bp in compiled.binds.items()}
        self.binds = {name: proc for name, proc in self.binds.items() if proc is not None}
        self.ordered = [(name, self.binds.get(name)) for name in self.names or ()]
        # values written into the statement itself (column == 'SCHEDULED'): passed on every execution
        # columns whose Python-side default (insert) or onupdate (update) the execution must supply
        self.prefetch = [(c.key, c.default) for c in getattr(compiled, "insert_prefetch", ())] + \
                        [(c.key, c.onupdate) for c in getattr(compiled, "update_prefetch", ())]
        prefetched = {name for name, _ in self.prefetch}
        self.fixed = {name: bp.effective_value for name, bp in compiled.binds.items()
                      if not bp.required and name not in prefetched}
        self.columns: list[str] = []
        self.results: list = []
        self.row = None
        self.defaults: dict[str, Any] = {}
        if isinstance(stmt, Select):
            self.columns = [c.key for c in stmt.selected_columns]
            self.results = [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in stmt.selected_columns]
            self.row = collections.namedtuple("Row", self.columns, rename=True)
        if isinstance(stmt, Insert):
            for column in stmt.table.c:
                if column.primary_key:
                    continue
                default = column.default
                if default is None:
                    self.defaults[column.name] = None
                elif default.is_callable:
                    self.defaults[column.name] = default.arg
                elif default.is_scalar:
                    self.defaults[column.name] = default.arg

    def parameters(self, values: dict):
        if self.fixed:
            values = {**self.fixed, **values}
        for name, default in self.prefetch:
            if name not in values:
                values = {**values, name: default.arg(None) if default.is_callable else default.arg}
        binds = self.binds
        if self.names is None:
            return {k: (binds[k](v) if k in binds else v) for k, v in values.items()}
        return [values[k] if proc is None else proc(values[k]) for k, proc in self.ordered]

    def with_defaults(self, values: dict) -> dict:
        """An insert's values completed with the columns' defaults (what SQLAlchemy's execution would add)."""
        full = {}
        for name, default in self.defaults.items():
            if name in values:
                full[name] = values[name]
            else:
                full[name] = default(None) if callable(default) else default
        return full

    def rows(self, cursor) -> list:
        results, make = self.results, self.row
        return [make(*[(p(v) if p is not None else v) for p, v in zip(results, raw)]) for raw in cursor.fetchall()]


_PLANS: dict[tuple[int, str], _Plan] = {}


_CONNECTION_KEY = "ris.rows.connection"


def dbapi_connection(session: Session):
    """(DBAPI connection, dialect) of the session's current transaction, after pending ORM changes are flushed.

    ``Session.connection()`` costs tens of microseconds and is where a pending ``begin_nested()`` emits its
    SAVEPOINT, so it is called once per (transaction, savepoint) and remembered in ``session.info``."""
    if session.new or session.dirty or session.deleted:
        session.flush()
    root, nested = session.get_transaction(), session.get_nested_transaction()
    cached = session.info.get(_CONNECTION_KEY)
    if cached is not None and cached[0] is root and cached[1] is nested and root is not None:
        return cached[2], cached[3]
    connection = session.connection()
    entry = (session.get_transaction(), session.get_nested_transaction(), connection.connection.driver_connection,
             connection.dialect)
    session.info[_CONNECTION_KEY] = entry
    return entry[2], entry[3]


def _prepared(session: Session, stmt) -> tuple[_Plan, Any, Any]:
    """The statement's plan for this session's database, the DBAPI connection to run it on, the dialect."""
    dbapi, dialect = dbapi_connection(session)
    plan = _PLANS.get((id(stmt), dialect.name))
    if plan is None:
        plan = _PLANS[(id(stmt), dialect.name)] = _Plan(stmt, dialect)
    return plan, dbapi, dialect


class _Result:
    """What :func:`read` returns: the rows of a select, with ``first()``, ``all()`` and iteration."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list):
        self._rows = rows

    def first(self):
        return self._rows[0] if self._rows else None

    def all(self) -> list:
        return self._rows

    def __iter__(self):
        return iter(self._rows)


def _execute(dbapi, dialect, sql: str, params, *, many: bool = False):
    """Run ``sql`` on the DBAPI connection; a driver error is raised as SQLAlchemy's exception of the same kind
    (IntegrityError, OperationalError...), as ``Session.execute`` would, so callers handle one family."""
    try:
        if many:
            cursor = dbapi.cursor()
            cursor.executemany(sql, params)
            return cursor
        return dbapi.execute(sql, params)
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc


def read(session: Session, stmt, params: dict | None = None) -> _Result:
    """Run a prebuilt select and return its rows (attribute access by column key)."""
    plan, dbapi, dialect = _prepared(session, stmt)
    if plan.expanding:
        return _Result(list(session.execute(stmt, params or {})))
    return _Result(plan.rows(_execute(dbapi, dialect, plan.sql, plan.parameters(params or {}))))


def run(session: Session, stmt, params: dict | None = None) -> int:
    """Run a prebuilt insert, update or delete; the number of rows it touched."""
    plan, dbapi, dialect = _prepared(session, stmt)
    if plan.expanding:
        return session.execute(stmt, params or {}).rowcount
    return _execute(dbapi, dialect, plan.sql, plan.parameters(params or {})).rowcount


def run_many(session: Session, stmt, rows: list[dict]) -> None:
    """Run a prebuilt insert, update or delete once per parameter set (executemany)."""
    if rows:
        plan, dbapi, dialect = _prepared(session, stmt)
        _execute(dbapi, dialect, plan.sql, [plan.parameters(values) for values in rows], many=True)


_INSERTS: dict[tuple[str, bool], Any] = {}
_UPDATES: dict[tuple, Any] = {}


def _insert(table: Table, returning: bool):
    stmt = _INSERTS.get((table.name, returning))
    if stmt is None:
        stmt = insert(table).values({c.name: bindparam(c.name) for c in table.c if not c.primary_key})
        if returning:
            stmt = stmt.returning(*table.primary_key.columns)
        _INSERTS[(table.name, returning)] = stmt
    return stmt


VERSIONS_BUMPED = "ris.versions_bumped"   # session.info: what counted its version in this transaction
WATCH_WRITES = "ris.watch_writes"   # session.info (set on a session factory): the tables whose Core writes are kept
WRITES = "ris.row_writes"           # ... in this list: (table name, key, None when created | {column: value before})


def written(session: Session, table_name: str, key: int, before: dict | None) -> None:
    """A row was created (``before`` None) or changed with Core: noted for a watcher of the session's units of work
    (interfaces.fhir.subscription), as the ORM's flush events show it the rows it writes. Nothing unless asked."""
    if table_name in session.info.get(WATCH_WRITES, ()):
        session.info.setdefault(WRITES, []).append((table_name, key, before))


def version_counted(session: Session, table_name: str, key: int) -> bool:
    """Record that row ``key`` of a versioned table (patients, orders) has its version for this transaction: created
    in it, or bumped once already. True when it had already. Core writes here and the ORM (app.models) share it,
    so a record is +1 once per transaction whichever of them changes it."""
    seen = session.info.setdefault(VERSIONS_BUMPED, set())
    if (table_name, key) in seen:
        return True
    seen.add((table_name, key))
    return False


def insert_row(session: Session, table: Table, values: dict, *, record: bool = True) -> int:
    """INSERT one row into ``table`` (column defaults apply) and return its primary key."""
    returning = dbapi_connection(session)[1].name != "sqlite"   # SQLite: the cursor's lastrowid is cheaper
    plan, dbapi, dialect = _prepared(session, _insert(table, returning))
    cursor = _execute(dbapi, dialect, plan.sql, plan.parameters(plan.with_defaults(values)))
    key = cursor.fetchone()[0] if returning else cursor.lastrowid
    if "version" in table.c:
        version_counted(session, table.name, key)
    written(session, table.name, key, None)
    if record:
        note(session, {"action": "created", "entity": table.name, "id": key,
                       "values": {k: plain(v) for k, v in values.items()}})
    return key


def insert_rows(session: Session, table: Table, rows: list[dict], *, record: bool = True) -> None:
    """INSERT several rows at once (executemany); their keys are not returned."""
    if not rows:
        return
    plan = _prepared(session, _insert(table, False))[0]
    run_many(session, _insert(table, False), [plan.with_defaults(values) for values in rows])
    if record:
        for values in rows:
            note(session, {"action": "created", "entity": table.name, "id": None,
                           "values": {k: plain(v) for k, v in values.items()}})


def update_row(session: Session, model, key: int, before: dict, after: dict, *, bump_version: bool = False,
               record: bool = True) -> dict:
    """UPDATE the columns of row ``key`` whose value in ``after`` differs from ``before``; return those changes
    ({column: new}), empty when nothing differs (then nothing is written)."""
    diff = {k: v for k, v in after.items() if before.get(k) != v}
    if not diff:
        return {}
    table = model.__table__
    bump_version = bump_version and not version_counted(session, table.name, key)
    shape = (table.name, tuple(sorted(diff)), bump_version)
    stmt = _UPDATES.get(shape)
    if stmt is None:
        values: dict[str, Any] = {column: bindparam(f"v_{column}") for column in shape[1]}
        if bump_version:
            values["version"] = table.c.version + 1
        stmt = _UPDATES[shape] = update(table).where(table.c.id == bindparam("v__key")).values(values)
    run(session, stmt, {"v__key": key, **{f"v_{k}": v for k, v in diff.items()}})
    changed(session, model, key, before={k: before.get(k) for k in diff})
    if record:
        note(session, {"action": "updated", "entity": table.name, "id": key,
                       "changes": {k: [plain(before.get(k)), plain(v)] for k, v in diff.items()}})
    return diff


def changed(session: Session, model, key: int, *, before: dict | None = None) -> None:
    """The row ``key`` of ``model`` was written with Core: expire the ORM object that mirrors it, if loaded.
    ``before``: the changed columns' values before the write (for :func:`written`)."""
    if before is not None:
        written(session, model.__tablename__, key, before)
    obj = session.identity_map.get(identity_key(model, key))
    if obj is not None:
        session.expire(obj)


def children_changed(session: Session, model, keys: Iterable[int], attribute: str) -> None:
    """Rows were added under the parents ``keys``: expire the parents' loaded ``attribute`` collection."""
    for key in keys:
        obj = session.identity_map.get(identity_key(model, key))
        if obj is not None:
            session.expire(obj, [attribute])

