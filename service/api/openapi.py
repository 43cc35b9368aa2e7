"""The OpenAPI document, saying what this server does in its configuration.

FastAPI would mark a bearer token required on every route that checks one, but the server asks
for the token only where one is configured: the admin routes whenever there is a token, the
reads only with ``read_requires_token``. Here the bearer scheme is declared only when a token is
configured, and an operation names it (and its ``401``) only where the server requires it.

The query parameters the server parses itself carry the patterns it accepts: ``ids`` (up to
:data:`~.reads.MAX_IDS` integers) and ``attributes`` (the names the store serves, once it
describes them), so a request the document allows is one the server takes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from batchstash.client import NotPrimedError, StaleStoreError

from .deps import require_admin, require_read
from .reads import MAX_IDS
from .schemas import UNAUTHORIZED
from .state import ServerState

__all__ = [
    "BEARER",
    "attributes_pattern",
    "document",
    "ids_pattern",
    "install_openapi",
    "token_operations",
]

BEARER = "bearer"
"""The name of the bearer token's security scheme."""

NAME = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
"""An attribute name, as :func:`~.reads.parse_attributes` takes it."""
_ID = r"\+?\d+(_\d+)*"  # what int() parses without a sign that makes it negative


def ids_pattern() -> str:
    """``ids``: 1 to :data:`~.reads.MAX_IDS` non-negative integers, comma separated."""
    one = rf"\s*{_ID}\s*"
    return rf"^{one}(,{one}){{0,{MAX_IDS - 1}}}$"


def attributes_pattern(names: set[str] | None = None) -> str:
    """``attributes``: comma separated names, of ``names`` when the store's are known."""
    name = NAME if not names else "(" + "|".join(re.escape(n) for n in sorted(names)) + ")"
    one = rf"\s*{name}\s*"
    return rf"^{one}(,{one})*$"


def token_operations(routers: Sequence[APIRouter], state: ServerState) -> set[tuple[str, str]]:
    """``(path, method)`` of each operation that asks for the token in this configuration."""
    if state.token is None:
        return set()
    found = set()
    for router in routers:
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            checks = {d.dependency for d in route.dependencies}
            if require_admin in checks or (
                require_read in checks and state.settings.read_requires_token
            ):
                found |= {(route.path_format, m.lower()) for m in route.methods or ()}
    return found


def _stored_attributes(state: ServerState) -> set[str] | None:
    try:
        return state.reader.attributes()
    except (NotPrimedError, StaleStoreError):
        return None  # nothing servable is described yet: any name may be one later


def document(app: FastAPI, state: ServerState, routers: Sequence[APIRouter]) -> dict[str, Any]:
    """The OpenAPI document of ``app`` as served by this server now.

    Args:
        app: the application.
        state: the server's state (its token, settings and the store's reader).
        routers: the routers whose operations may check the token.
    """
    doc = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=app.routes,
    )
    if state.token is not None:
        schemes = doc.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The server's token (BATCHSTASH_TOKEN)",
        }
    guarded = token_operations(routers, state)
    patterns = {"ids": ids_pattern(), "attributes": attributes_pattern(_stored_attributes(state))}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if (path, method) in guarded:
                operation["security"] = [{BEARER: []}]
                operation["responses"]["401"] = UNAUTHORIZED
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query" and parameter["name"] in patterns:
                    _set_pattern(parameter["schema"], patterns[parameter["name"]])
    return doc


def _set_pattern(schema: dict[str, Any], pattern: str) -> None:
    """Put ``pattern`` on the string alternative of a (possibly optional) parameter schema."""
    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string":
            option["pattern"] = pattern


def install_openapi(app: FastAPI, state: ServerState, routers: Sequence[APIRouter]) -> None:
    """Serve :func:`document` as the app's OpenAPI document (made again when the store changes).

    The attribute names come from the store's description, which a prime, a clear or another
    server may change: the document is remade when the store's fingerprint changes.
    """
    made: dict[str | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        key = state.reader.fingerprint
        if key not in made:
            made.clear()
            made[key] = document(app, state, routers)
        return made[key]

    app.openapi = openapi  # type: ignore[method-assign]
