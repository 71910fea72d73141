"""Errors a user can act on: each names the party, file and field involved."""

from __future__ import annotations


class FedCreditError(Exception):
    """Base class for every error fedcredit reports to a user."""


class ConfigError(FedCreditError):
    """A config file is missing, malformed, or inconsistent."""


class DataError(FedCreditError):
    """A party's dataset is unusable (missing column, NaN, non-numeric, empty...)."""


class ProtocolError(FedCreditError):
    """A protocol step failed: a party misbehaved, timed out, or disconnected."""


class SecurityError(FedCreditError):
    """A signature, certificate, or sealed envelope failed verification."""


class ModelMismatch(SecurityError):
    """Parties of a joint model serve different versions of it (activate the same run everywhere)."""


class ConsistencyCheckFailed(SecurityError):
    """A bank was shown a survivor set of a secure aggregation that too few banks attested (a lying coordinator)."""


class NotAuthorized(SecurityError):
    """An authenticated caller asked for something its name or role may not have."""


class RateLimited(NotAuthorized):
    """A caller asked for more than its policy allows per second or per day (retry later, or raise the limit)."""


class UnknownId(DataError):
    """A scoring request names an id the party does not hold."""


class PartyUnavailable(ProtocolError):
    """A peer party did not answer in time or could not be reached; ``party`` names it."""

    def __init__(self, party: str, message: str) -> None:
        self.party = party
        super().__init__(message)

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return PartyUnavailable, (self.party, str(self))


class PeerAborted(ProtocolError):
    """A peer role failed and said so (``Transport.abort``): stop waiting for it.  ``party`` and ``reason`` name it."""

    def __init__(self, me: str, party: str, reason: str) -> None:
        self.me, self.party, self.reason = me, party, reason
        super().__init__(f"party '{me}': party '{party}' aborted: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        return PeerAborted, (self.me, self.party, self.reason)


class PolicyRefused(NotAuthorized):
    """A party's ``[policy]`` (or its officer) refused a job; ``party`` and ``rule`` name who and which rule."""

    def __init__(self, party: str, rule: str, message: str) -> None:
        self.party = party
        self.rule = rule
        super().__init__(f"party '{party}' refused the job (rule {rule}): {message}")
