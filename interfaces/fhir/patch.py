"""JSON Patch (RFC 6902) for the FHIR patch interaction (FHIR R4 http.html 3.1.0.6, ``PATCH [type]/[id]`` with
``Content-Type: application/json-patch+json``).

The patch is applied to the resource as the server would answer a read of it, all operations or none
(RFC 6902 section 5); the result is then an update of the resource with its If-Match (interfaces.fhir.interactions
.update_resource), so a patch changes exactly what its operations change and nothing else, under the same
business rules as a PUT. Operations: add, remove, replace, move, copy, test; paths are JSON Pointers (RFC 6901,
``~1`` for '/', ``~0`` for '~', ``-`` past the end of an array for add).

Errors (RFC 5789 2.2): a document that is not a JSON Patch (not an array, unknown op, missing member, bad pointer)
is 400; an operation that cannot be applied to this resource (a path that does not exist, a failed ``test``) is
409 conflicting state, naming the operation (``Patch[n]``) and its path.
"""

from __future__ import annotations

import copy

from interfaces.fhir.errors import FhirError

MEDIA_TYPE = "application/json-patch+json"
_MEMBERS = {"add": ("value",), "remove": (), "replace": ("value",), "move": ("from",), "copy": ("from",),
            "test": ("value",)}


def _pointer(text, where: str) -> list[str]:
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise FhirError(400, "structure", f"{where}: {text!r} is not a JSON Pointer (RFC 6901: '' or '/...')",
                        (where,))
    parts = text.split("/")[1:]
    for part in parts:
        rest = part.replace("~0", "").replace("~1", "")
        if "~" in rest:
            raise FhirError(400, "structure", f"{where}: {text!r} has a '~' not followed by 0 or 1 (RFC 6901)",
                            (where,))
    return [p.replace("~1", "/").replace("~0", "~") for p in parts]


def _index(container: list, token: str, where: str, path: str, *, end_ok: bool) -> int:
    if token == "-" and end_ok:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise FhirError(409, "conflict", f"{where}: {path!r}: {token!r} is not an index of an array", (where,))
    index = int(token)
    if index > len(container) or (index == len(container) and not end_ok):
        raise FhirError(409, "conflict", f"{where}: {path!r}: index {index} is past the end of an array of "
                        f"{len(container)}", (where,))
    return index


def _parent(doc, parts: list[str], where: str, path: str):
    node = doc
    for depth, token in enumerate(parts[:-1]):
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, where, path, end_ok=False)]
        else:
            missing = "/" + "/".join(parts[:depth + 1])
            raise FhirError(409, "conflict", f"{where}: {path!r}: {missing!r} does not exist in the resource",
                            (where,))
    return node


def _get(doc, parts: list[str], where: str, path: str):
    if not parts:
        return doc
    parent, last = _parent(doc, parts, where, path), parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise FhirError(409, "conflict", f"{where}: {path!r} does not exist in the resource", (where,))
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, where, path, end_ok=False)]
    raise FhirError(409, "conflict", f"{where}: {path!r} does not exist in the resource", (where,))


def _add(doc, parts: list[str], value, where: str, path: str):
    if not parts:
        return value
    parent, last = _parent(doc, parts, where, path), parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, where, path, end_ok=True), value)
    else:
        raise FhirError(409, "conflict", f"{where}: {path!r}: the parent is not an object or array", (where,))
    return doc


def _remove(doc, parts: list[str], where: str, path: str):
    if not parts:
        raise FhirError(409, "conflict", f"{where}: the whole resource cannot be removed", (where,))
    _get(doc, parts, where, path)
    parent, last = _parent(doc, parts, where, path), parts[-1]
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[_index(parent, last, where, path, end_ok=False)]
    return doc


def _equal(a, b) -> bool:
    """JSON equality (RFC 6902 4.6): types matter (true is not 1), objects unordered, arrays ordered."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def apply_patch(resource: dict, operations) -> dict:
    """``resource`` with the JSON Patch ``operations`` applied (a new dict; all or nothing)."""
    if not isinstance(operations, list):
        raise FhirError(400, "structure", f"a JSON Patch is an array of operations (RFC 6902 3), not "
                        f"{type(operations).__name__}", ("Patch",))
    doc = copy.deepcopy(resource)
    for n, op in enumerate(operations):
        where = f"Patch[{n}]"
        if not isinstance(op, dict) or op.get("op") not in _MEMBERS:
            name = op.get("op") if isinstance(op, dict) else op
            raise FhirError(400, "structure", f"{where}: {name!r} is not a JSON Patch operation (add, remove, replace, "
                            "move, copy, test)", (where,))
        missing = [m for m in ("path", *_MEMBERS[op["op"]]) if m not in op]
        if missing:
            raise FhirError(400, "required", f"{where}: the {op['op']} operation needs "
                            f"{' and '.join(repr(m) for m in missing)}", (where,))
        path = op["path"]
        parts = _pointer(path, where)
        kind = op["op"]
        if kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op["value"]), where, path)
        elif kind == "remove":
            doc = _remove(doc, parts, where, path)
        elif kind == "replace":
            _get(doc, parts, where, path)   # the target must exist (RFC 6902 4.3)
            value = copy.deepcopy(op["value"])
            if not parts:
                doc = value
            else:
                parent, last = _parent(doc, parts, where, path), parts[-1]
                if isinstance(parent, dict):
                    parent[last] = value
                else:
                    parent[_index(parent, last, where, path, end_ok=False)] = value
        elif kind == "test":
            if not _equal(_get(doc, parts, where, path), op["value"]):
                raise FhirError(409, "conflict", f"{where}: test failed: {path!r} is not {op['value']!r}", (where,))
        else:   # move, copy
            source = _pointer(op["from"], where)
            if kind == "move" and parts[:len(source)] == source and len(parts) > len(source):
                raise FhirError(409, "conflict", f"{where}: cannot move {op['from']!r} into itself ({path!r})",
                                (where,))
            value = copy.deepcopy(_get(doc, source, where, op["from"]))
            if kind == "move":
                doc = _remove(doc, source, where, op["from"])
            doc = _add(doc, parts, value, where, path)
    if not isinstance(doc, dict):
        raise FhirError(409, "conflict", "the patched document is no longer a resource (a JSON object)", ("Patch",))
    return doc


def read_patch(raw: bytes):
    """The body of a PATCH request as JSON (400 when empty or malformed)."""
    import json
    if not raw.strip():
        raise FhirError(400, "required", "the request body is empty; send a JSON Patch (RFC 6902) array")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FhirError(400, "structure", f"the JSON Patch is not JSON: {exc}") from None
