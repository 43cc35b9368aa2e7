"""Request dependencies: the server state and bearer-token checks (``Annotated`` aliases).

The token checks read the ``Authorization`` header themselves: the OpenAPI document says where
the server asks for the token in its configuration (:mod:`.openapi`), which a security
dependency would mark as required on every route.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from batchstash.client import AuthError

from .state import ServerState

__all__ = [
    "AdminAccess",
    "ReadAccess",
    "State",
    "bearer_token",
    "check_read_token",
    "check_token",
    "require_admin",
    "require_read",
]


def get_state(request: Request) -> ServerState:
    """The server state of the app handling ``request``."""
    state: ServerState = request.app.state.batchstash
    return state


State = Annotated[ServerState, Depends(get_state)]


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (``""``: none given)."""
    scheme, _, given = (authorization or "").partition(" ")
    return given.strip() if scheme.lower() == "bearer" else ""


def check_token(state: ServerState, given: str) -> None:
    """Refuse ``given`` unless it is the configured token (anything passes without one).

    Raises:
        AuthError: missing or wrong.
    """
    if state.token is None:
        return
    # constant-time comparison: response time must not reveal how much of the token matched
    if not secrets.compare_digest(given.encode(), state.token.encode()):
        raise AuthError("missing or wrong bearer token")


def check_read_token(state: ServerState, given: str) -> None:
    """Reads need the token only when ``read_requires_token`` is set (see :func:`check_token`)."""
    if state.settings.read_requires_token:
        check_token(state, given)


def require_admin(state: State, request: Request) -> None:
    """Admin endpoints need the token whenever one is configured."""
    check_token(state, bearer_token(request.headers.get("authorization")))


def require_read(state: State, request: Request) -> None:
    """Reads need the token only when ``read_requires_token`` is set."""
    check_read_token(state, bearer_token(request.headers.get("authorization")))


AdminAccess = Depends(require_admin)
ReadAccess = Depends(require_read)
