"""What the JSON API's changes share: who acts (and whether their role may), the JSON body, one unit of work.

The acting person is the signed-in user or the API token's (interfaces.web.security sets ``g.user``): their
role must have the action's permission (app.services.auth.PERMISSIONS), else 403. With RIS_AUTH_REQUIRED off and
nobody signed in, the API is open and the change is recorded as made by "anonymous (API)"; where a name is needed
(who signed a report) the body must give it.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, g, request
from werkzeug.exceptions import Forbidden

from app.commands import Cause
from app.db import unit_of_work
from app.errors import InvalidInput
from app.services import auth


@dataclass(frozen=True)
class Actor:
    username: str      # "" when nobody is signed in (the API is open)
    role: str
    channel: str = "api"

    @property
    def cause(self) -> Cause:
        """How the lifecycle records a change by this person (kind user: name, role and channel)."""
        return Cause("user", reference=self.username or "anonymous", sender=f"{self.role or 'no role'} via {self.channel}")


def acting(permission: str) -> Actor:
    """The person making this request, who must hold ``permission`` (403 Forbidden naming it otherwise)."""
    user = g.get("user")
    if user is None:
        return Actor("", "")
    if not auth.may(user.role, permission):
        raise Forbidden(f"the role {user.role} may not {permission.replace('-', ' ')} (roles that may: "
                        f"{', '.join(sorted(r.value for r in auth.PERMISSIONS.get(permission, ())))})")
    return Actor(user.username, user.role)


def body() -> dict:
    """The JSON object of the request ({} when there is none); 400 for anything else."""
    if not request.get_data(cache=True):
        return {}
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object", location="body")
    return data


def text_field(data: dict, name: str, *, required: bool = True) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be text", location=name, missing=value is None)
    return value


def flag(data: dict, name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false", location=name)
    return value


def writer():
    return unit_of_work(current_app.extensions["ris.sessions"])


def reader():
    return unit_of_work(current_app.extensions["ris.read_sessions"])
