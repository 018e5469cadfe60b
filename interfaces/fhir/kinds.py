"""What a FHIR resource type served here is: its interactions, search parameters, storage and rendering.

One :class:`Kind` per resource type; the REST routes (interfaces.fhir.routes) and the
CapabilityStatement (interfaces.fhir.capability) both read the registry built in
interfaces.fhir.registry, so what is announced is what is served (FHIR R4 capabilitystatement.html).
Interaction names are those of the R4 code system ``restful-interaction`` (http.html 3.1.0.1).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from interfaces.fhir.datatypes import Context, utc_instant
from interfaces.fhir.errors import FhirError
from interfaces.fhir.search import SearchParam, id_param, last_updated_param


class Kind:
    name: str = ""
    model = None                       # the SQLAlchemy model whose rows are the resources
    interactions: tuple[str, ...] = ("read", "search-type")
    versioned: bool = False            # meta.versionId / ETag / vread / If-Match from ``model.version``
    documentation: str = ""
    profile: str = ""

    def __init__(self):
        params = [id_param(self.model.id), last_updated_param(self.updated_column())] + self.own_params()
        self.search_params: dict[str, SearchParam] = {p.name: p for p in params}

    # To be given by each kind ------------------------------------------------------------
    def own_params(self) -> list[SearchParam]:
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

    def search(self, session: Session, clauses: list, count: int, offset: int) -> tuple[int, list]:
        """(total, one page of rows) in id order, so paging is stable."""
        q = self.query()
        for clause in clauses:
            q = q.where(clause)
        total = session.scalar(select(func.count()).select_from(q.with_only_columns(self.model.id).subquery()))
        rows = list(session.scalars(q.order_by(self.model.id).offset(offset).limit(count)).unique()) if count else []
        return total, rows
