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
