"""Federated binning's wire vocabulary, declared once for both roles (``L`` label party, ``P`` a passive party).

The payload of each tag is a row of the leakage table in docs/binning.md.
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Tags:
    """``prefix`` is ``BinningParams.tag_prefix`` ("bin")."""

    prefix: str = "bin"

    @property
    def setup(self) -> str:  # L -> P: {"version", "config": method/n_bins/n_prebins/min_rows/transform, "n", "digest"}
        return f"{self.prefix}/setup"

    @property
    def ctx(self) -> str:  # L -> P: the public CKKS context
        return f"{self.prefix}/ctx"

    @property
    def y(self) -> str:  # L -> P: Enc(y), the training labels as CKKS ciphertexts (chunked)
        return f"{self.prefix}/y"

    @property
    def counts(self) -> str:  # P -> L: per own feature its prebin count and kind; rows per prebin (plaintext)
        return f"{self.prefix}/counts"

    def events(self, j: int) -> str:  # P -> L: Enc(events per prebin) of own feature j, slot-masked (one message each)
        return f"{self.prefix}/events/{j}"

    @property
    def result(self) -> str:  # L -> P: per own feature: selected (1 bit), merge map (optimal), WOE per bin (woe mode)
        return f"{self.prefix}/result"
