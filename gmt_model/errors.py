"""Exceptions shared by light modules (server, CLI) without importing torch."""

from __future__ import annotations

__all__ = ["RoutingError"]


class RoutingError(ValueError):
    """Bad routing or feedback input; nothing was stored."""
