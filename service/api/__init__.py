"""The FastAPI server: batches as binary payloads, admin endpoints, health and metrics."""

from .app import create_app

__all__ = ["create_app"]
