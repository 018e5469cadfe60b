"""The REST edge's one error translation: domain errors and HTTP errors as RFC 9457 problem documents."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from app.errors import Conflict, DomainError, InvalidInput, NotFound, Unsupported

log = logging.getLogger("interfaces.http")

_STATUS = [(NotFound, 404), (Conflict, 409), (InvalidInput, 400), (Unsupported, 400), (DomainError, 422)]


def problem(status: int, title: str, detail: str = "", **extra):
    body = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def register_problem_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(exc: DomainError):
        status = next(code for kind, code in _STATUS if isinstance(exc, kind))
        return problem(status, type(exc).__name__, exc.message, location=exc.location)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        # A blueprint with its own error format (FHIR: OperationOutcome) registers it for its prefix.
        for prefix, render in app.extensions.get("ris.error_renderers", {}).items():
            if request.path == prefix or request.path.startswith(prefix + "/"):
                return render(exc)
        return problem(exc.code or 500, exc.name, exc.description or "")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", f"{type(exc).__name__}; see the engine log")
