"""The root of Telepath's exception hierarchy.

Errors carry the decision their handler needs: ``status_hint`` for the SIP status to answer with
(protocol errors), ``retryable`` for bridge failures. Layers subclass these; nothing raises a bare
``Exception``.
"""

from __future__ import annotations


class TelepathError(Exception):
    """Base class for every error Telepath raises on purpose."""


class ProtocolError(TelepathError):
    """A peer sent something the protocol does not allow.

    Attributes:
        status_hint: the SIP status code to answer with (400 for a malformed message, ...).
    """

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class ConfigurationError(TelepathError):
    """The service cannot start with the configuration it was given."""


class DatabaseUnavailable(TelepathError):
    """The database cannot be reached or opened; the message says why, never a password."""
