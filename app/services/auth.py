"""Users, their passwords and what each role may do.

Passwords are kept as salted scrypt hashes (RFC 7914, the standard library's ``hashlib.scrypt``) in the
form ``scrypt$n$r$p$salt$hash``; checking is constant time, and an unknown user costs as much as a wrong
password so that timing does not tell which usernames exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.models import ApiToken, Role, User, utcnow

# What each role may do (the pages and API areas check these names).
PERMISSIONS: dict[str, frozenset[Role]] = {
    "board": frozenset({Role.TECHNOLOGIST, Role.SCHEDULER, Role.RADIOLOGIST, Role.ADMINISTRATOR}),
    "patients": frozenset({Role.TECHNOLOGIST, Role.SCHEDULER, Role.RADIOLOGIST, Role.ADMINISTRATOR}),
    "images": frozenset({Role.TECHNOLOGIST, Role.RADIOLOGIST, Role.ADMINISTRATOR}),
    "messages": frozenset({Role.ANALYST, Role.ADMINISTRATOR}),
    "reprocess": frozenset({Role.ANALYST, Role.ADMINISTRATOR}),
    "audit": frozenset({Role.ADMINISTRATOR}),
    # What a person may do to a procedure (app.services.tracking), its report and its booking.
    "arrive": frozenset({Role.TECHNOLOGIST, Role.SCHEDULER, Role.ADMINISTRATOR}),
    "no-show": frozenset({Role.TECHNOLOGIST, Role.SCHEDULER, Role.ADMINISTRATOR}),
    "start": frozenset({Role.TECHNOLOGIST, Role.ADMINISTRATOR}),
    "complete": frozenset({Role.TECHNOLOGIST, Role.ADMINISTRATOR}),
    "report": frozenset({Role.RADIOLOGIST, Role.ADMINISTRATOR}),
    "schedule": frozenset({Role.SCHEDULER, Role.ADMINISTRATOR}),
}

MIN_PASSWORD = 10
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_N, _R, _P = 2**14, 8, 1


def may(role: Role | str | None, permission: str) -> bool:
    """Whether ``role`` has ``permission`` (an unknown permission is allowed to nobody)."""
    try:
        return role is not None and Role(role) in PERMISSIONS.get(permission, frozenset())
    except ValueError:
        return False


def parse_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        raise InvalidInput(f"role {value!r} is not one of {', '.join(r.value for r in Role)}",
                           location="role") from None


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    enc = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${enc(salt).decode()}${enc(digest).decode()}"


def check_password(stored: str, password: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r),
                                p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


_DUMMY = hash_password(secrets.token_urlsafe(16))


def _check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD} characters", location="password")


def add_user(session: Session, username: str, password: str, role: Role | str, *, full_name: str = "") -> User:
    """A new user; the username is unique whatever its case."""
    username = username.strip()
    if not _USERNAME.match(username):
        raise InvalidInput("a username is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or "
                           "digit", location="username")
    role = role if isinstance(role, Role) else parse_role(role)
    _check_new_password(password)
    if find_user(session, username) is not None:
        raise Conflict(f"user {username!r} exists", location="username")
    user = User(username=username, full_name=full_name.strip(), role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def add_token(session: Session, name: str, role: Role | str) -> tuple[ApiToken, str]:
    """A new API token and its secret, which is shown once and never kept (only its digest is)."""
    name = name.strip()
    if not _USERNAME.match(name):
        raise InvalidInput("a token name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter "
                           "or digit", location="name")
    role = role if isinstance(role, Role) else parse_role(role)
    if session.scalars(select(ApiToken).where(func.lower(ApiToken.name) == name.lower())).first() is not None:
        raise Conflict(f"token {name!r} exists (names are never reused, also once revoked: choose another)",
                       location="name")
    secret = "ris_" + secrets.token_urlsafe(32)
    token = ApiToken(name=name, role=role, digest=_digest(secret))
    session.add(token)
    session.flush()
    return token, secret


def token_for(session: Session, secret: str) -> ApiToken | None:
    """The live token whose secret this is, else None."""
    if not secret:
        return None
    return session.scalars(select(ApiToken).where(ApiToken.digest == _digest(secret),
                                                  ApiToken.revoked.is_(False))).first()


def revoke_token(session: Session, name: str) -> ApiToken:
    token = session.scalars(select(ApiToken).where(func.lower(ApiToken.name) == name.strip().lower())).first()
    if token is None:
        raise NotFound(f"no token {name!r}", location="name")
    token.revoked = True
    session.flush()
    return token


def find_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(func.lower(User.username) == username.strip().lower())).first()


def set_password(session: Session, username: str, password: str) -> User:
    user = find_user(session, username)
    if user is None:
        raise NotFound(f"no user {username!r}", location="username")
    _check_new_password(password)
    user.password_hash = hash_password(password)
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, else None (same cost either way)."""
    user = find_user(session, username) if username.strip() else None
    if user is None or not user.active:
        check_password(_DUMMY, password)
        return None
    if not check_password(user.password_hash, password):
        return None
    user.last_login_at = utcnow()
    return user


def active_user(session: Session, user_id: int) -> User | None:
    user = session.get(User, user_id)
    return user if user is not None and user.active else None
