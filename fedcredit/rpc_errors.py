"""Our errors across gRPC: one table from error type to status code, and back by type name.

Why: a scoring peer's refusal must arrive as the same error type it was raised as
(a model-version mismatch is not a missing id), without matching on message text.
The server aborts with the table's status code and names the error type in the
``fc-error`` trailing metadata; the client rebuilds that type from the same table.
"""

from __future__ import annotations

from typing import Any

import grpc

from fedcredit.errors import (
    ConfigError,
    DataError,
    FedCreditError,
    ModelMismatch,
    NotAuthorized,
    PartyUnavailable,
    ProtocolError,
    RateLimited,
    SecurityError,
    UnknownId,
)

__all__ = ["STATUS", "ERROR_KEY", "status_of", "trailer_of", "error_from_rpc"]

#: Error type -> gRPC status, most specific first (the first ``isinstance`` match wins).
STATUS: tuple[tuple[type[FedCreditError], grpc.StatusCode], ...] = (
    (PartyUnavailable, grpc.StatusCode.UNAVAILABLE),
    (UnknownId, grpc.StatusCode.NOT_FOUND),
    (DataError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (RateLimited, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (NotAuthorized, grpc.StatusCode.PERMISSION_DENIED),
    (SecurityError, grpc.StatusCode.PERMISSION_DENIED),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (ProtocolError, grpc.StatusCode.ABORTED),
    (FedCreditError, grpc.StatusCode.INTERNAL),
)
_BY_NAME: dict[str, type[FedCreditError]] = {cls.__name__: cls for cls, _ in STATUS}
ERROR_KEY = "fc-error"


def _type_of(e: FedCreditError) -> type[FedCreditError]:
    return next(cls for cls, _ in STATUS if isinstance(e, cls))


def status_of(e: FedCreditError) -> grpc.StatusCode:
    """The status code a server aborts with for ``e``."""
    return next(code for cls, code in STATUS if isinstance(e, cls))


def trailer_of(e: FedCreditError) -> tuple[tuple[str, str], ...]:
    """Trailing metadata naming the error type (set before aborting)."""
    return ((ERROR_KEY, _type_of(e).__name__),)


def error_from_rpc(e: grpc.RpcError, *, party: str, role: str = "passive party") -> FedCreditError:
    """The error peer ``party`` raised, rebuilt as its type (its message is prefixed with the party unless it
    names it already); an error without our trailer is a ProtocolError naming the status."""
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    name = ""
    trailing: Any = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for k, v in trailing or ():
        if k == ERROR_KEY:
            name = str(v)
    cls = _BY_NAME.get(name)
    if cls is None:
        code = e.code() if hasattr(e, "code") else None
        return ProtocolError(f"{role} '{party}' failed: {getattr(code, 'name', code)}: {details}")
    message = details if f"'{party}'" in details else f"{role} '{party}': {details}"
    if cls is PartyUnavailable:
        return PartyUnavailable(party, message)
    return cls(message)
