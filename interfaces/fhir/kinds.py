"""What a FHIR resource type served here is: its interactions, search parameters, storage and rendering.

One :class:`Kind` per resource type; the REST routes (interfaces.fhir.routes) and the
CapabilityStatement (interfaces.fhir.capability) both read the registry built in
interfaces.fhir.registry, so what is announced is what is served (FHIR R4 capabilitystatement.html).
Interaction names are those of the R4 code system ``restful-interaction`` (http.html 3.1.0.1).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from interfaces.fhir.datatypes import Context, utc_instant
from interfaces.fhir.errors import FhirError
from interfaces.fhir.search import SearchParam, id_param, last_updated_param


@dataclass(frozen=True)
class Operation:
    """A FHIR operation (operations.html) on a type or instance: ``POST [type]/$name`` or ``[type]/[id]/$name``;
    ``run(session, ctx, parameters_resource, instance_or_None) -> (status, resource dict)``."""

    name: str
    definition: str
    documentation: str
    run: Callable
    instance: bool = False
    type_level: bool = True


class Kind:
    name: str = ""
    model = None                       # the SQLAlchemy model whose rows are the resources
    interactions: tuple[str, ...] = ("read", "search-type")
    versioned: bool = False            # meta.versionId / ETag / vread / If-Match from ``model.version``
    refusals: dict[str, str] = {}      # interaction -> why it is not offered (said in the 405)
    documentation: str = ""
    profile: str = ""

    def __init__(self):
        params = [id_param(self.model.id), last_updated_param(self.updated_column())] + self.own_params()
        self.search_params: dict[str, SearchParam] = {p.name: p for p in params}
        self.operations: dict[str, Operation] = {op.name: op for op in self.own_operations()}

    # Conditional interactions (http.html 3.1.0.4.3, 3.1.0.7.1, 3.1.0.8.1): offered with the plain ones, by the
    # same code (interfaces.fhir.interactions), so the CapabilityStatement reads them from here.
    @property
    def capability_extensions(self) -> list[dict]:
        """Extensions of this type's entry in the CapabilityStatement (e.g. the subscription topics offered)."""
        return []

    @property
    def conditional_create(self) -> bool:
        return "create" in self.interactions

    @property
    def conditional_update(self) -> bool:
        return "update" in self.interactions

    @property
    def conditional_delete(self) -> str:
        return "single" if "delete" in self.interactions else "not-supported"

    # To be given by each kind ------------------------------------------------------------
    def own_params(self) -> list[SearchParam]:
        return []

    def own_operations(self) -> list[Operation]:
        return []

    def updated_column(self):
        return self.model.updated_at

    def joined(self, stmt: Select) -> Select:
        """``stmt`` with the joins the search parameters' columns need (none by default)."""
        return stmt

    def query(self) -> Select:
        return self.joined(select(self.model))

    def render(self, obj, ctx: Context) -> dict:
        raise NotImplementedError

    def create(self, session: Session, resource, ctx: Context):
        raise FhirError(405, "not-supported", f"{self.name} cannot be created here")

    def update(self, session: Session, obj, resource, ctx: Context):
        raise FhirError(405, "not-supported", f"{self.name} cannot be updated here")

    def delete(self, session: Session, obj, ctx: Context) -> None:
        raise FhirError(405, "not-supported", f"{self.name} cannot be deleted here")

    # Shared -------------------------------------------------------------------------------
    def load(self, session: Session, number: int):
        return session.scalars(self.query().where(self.model.id == number)).first()

    def version(self, obj) -> int | None:
        """meta.versionId / ETag of a row (versioned types only): the row's ``version``."""
        return obj.version if self.versioned else None

    def updated(self, obj) -> dt.datetime | None:
        """meta.lastUpdated (naive UTC) of a row."""
        return getattr(obj, "updated_at", None)

    def meta(self, obj) -> dict:
        meta = {"lastUpdated": utc_instant(self.updated(obj) or dt.datetime.now(dt.UTC).replace(tzinfo=None))}
        if self.versioned:
            meta = {"versionId": str(self.version(obj)), **meta}
        if self.profile:
            meta["profile"] = [self.profile]
        return meta

    def search(self, session: Session, clauses: list, count: int, offset: int, sort=()) -> tuple[int, list]:
        """(total, one page of rows) in the ``sort`` order ((expression, descending) pairs, search.html
        3.1.1.5.14 _sort), then in id order, so paging is stable."""
        q = self.query()
        for clause in clauses:
            q = q.where(clause)
        total = session.scalar(select(func.count()).select_from(q.with_only_columns(self.model.id).subquery()))
        order = [expr.desc() if descending else expr.asc() for expr, descending in sort] + [self.model.id]
        rows = list(session.scalars(q.order_by(*order).offset(offset).limit(count)).unique()) if count else []
        return total, rows
