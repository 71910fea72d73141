"""CLI subcommands for the party model store and scoring (``fedcredit party models ...``,
``fedcredit score ...``).  Kept apart from cli.py so the deployment/scoring code owns them."""

from __future__ import annotations

import argparse
from typing import Any


def register_party_commands(party_sub: Any) -> None:
    """Add ``models`` (list/install/activate/rollback/export) under ``fedcredit party``."""


def register_top_level_commands(sub: Any) -> None:
    """Add top-level commands (``score``)."""


__all__ = ["register_party_commands", "register_top_level_commands", "argparse"]
