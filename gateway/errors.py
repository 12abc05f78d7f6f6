"""Errors of the gateway; each also subclasses the matching stdlib type."""

from __future__ import annotations

from enum import StrEnum


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class AuthCode(StrEnum):
    """Machine-readable reasons a connection or refresh is refused (client contract)."""

    TOKEN_MISSING = "token_missing"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    CLAIMS_INVALID = "claims_invalid"
    FORBIDDEN = "forbidden"
    TOKEN_REVOKED = "token_revoked"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    UNAVAILABLE = "unavailable"


class AuthError(GatewayError, PermissionError):
    """A token was refused; `code` is what the client sees in connect_error."""

    def __init__(self, code: AuthCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RequestError(GatewayError, ValueError):
    """A client event was malformed; answered with an error ack."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def ack(self) -> dict[str, object]:
        """The error ack a client receives (client contract)."""
        return {"ok": False, "error": {"code": self.code, "message": self.message}}
