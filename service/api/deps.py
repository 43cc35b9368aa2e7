"""Request dependencies: the server state and bearer-token checks (``Annotated`` aliases)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from batchstash.client import AuthError

from .state import ServerState

__all__ = ["AdminAccess", "ReadAccess", "State", "check_read_token", "check_token"]

_bearer = HTTPBearer(auto_error=False, description="The server's token (BATCHSTASH_TOKEN)")


def get_state(request: Request) -> ServerState:
    """The server state of the app handling ``request``."""
    state: ServerState = request.app.state.batchstash
    return state


State = Annotated[ServerState, Depends(get_state)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


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


def _check(state: ServerState, credentials: HTTPAuthorizationCredentials | None) -> None:
    check_token(state, "" if credentials is None else credentials.credentials)


def require_admin(state: State, credentials: Credentials) -> None:
    """Admin endpoints need the token whenever one is configured."""
    _check(state, credentials)


def require_read(state: State, credentials: Credentials) -> None:
    """Reads need the token only when ``read_requires_token`` is set."""
    check_read_token(state, "" if credentials is None else credentials.credentials)


AdminAccess = Depends(require_admin)
ReadAccess = Depends(require_read)
