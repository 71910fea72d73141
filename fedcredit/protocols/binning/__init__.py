"""Federated binning, WOE/IV and IV selection for vertical jobs (docs/binning.md).

``roles`` holds both roles side by side, ``messages`` the wire vocabulary, ``transform``
the fitted transform a model part stores; the plaintext math is ``fedcredit.binning``.
"""

from fedcredit.protocols.binning.messages import PROTOCOL_VERSION, Tags
from fedcredit.protocols.binning.roles import (
    PASSIVE_MIN_BIN_ROWS,
    LabelBinning,
    PassiveBinning,
    min_rows_for,
    passive_feature_id,
    run_binning_label,
    run_binning_passive,
)
from fedcredit.protocols.binning.transform import BinningTransform

__all__ = ["PROTOCOL_VERSION", "Tags", "PASSIVE_MIN_BIN_ROWS", "LabelBinning", "PassiveBinning", "min_rows_for",
           "passive_feature_id", "run_binning_label", "run_binning_passive", "BinningTransform"]
