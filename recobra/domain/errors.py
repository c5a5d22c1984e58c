"""Errors raised by the pure core. Each names the offending field and the reason."""

from __future__ import annotations


class DomainError(ValueError):
    """Base of every rule violation found by the domain.

    ``field`` names what was wrong (``"amount"``, ``"currency"``,
    ``"policies.standard.steps[2].day"`` ...) so adapters can report it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class IllegalTransition(DomainError):
    """A state machine was asked for a move its transitions table does not allow."""
