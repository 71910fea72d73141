"""Vertical SecureBoost: gradient-boosted trees over features split between a label party and passive parties.

Roles (one module each, every send names its receiver):

* **label party** (guest) — holds the labels, its own features and the CKKS secret key.
  It computes gradients ``g`` and hessians ``h``, encrypts them, finds every split, and
  keeps the tree structure and leaf weights (:mod:`.label`).
* **passive party** (host) — holds only its own features and the *public* CKKS context.
  It returns encrypted histograms, and for a split on one of its features it alone knows
  the feature and threshold; the label party only sees ``(party, opaque split id)``
  (:mod:`.passive`).

The rest: :mod:`.trees` (config, binning, the grower, model parts, the plaintext
reference), :mod:`.messages` (tags and command names both roles use), :mod:`.scoring`
(online inference).  Importing this package keeps ``from fedcredit.protocols import
secureboost as sb; sb.run_secureboost_label(...)`` working.

Encrypted histograms: the packed CKKS kernel (row layout, cumulative masks, K-fold
packing with baby-step/giant-step rotations, zero-sum output masks — and why) lives in
:mod:`crypto.ckks_hist`; the label party drives a :class:`~crypto.ckks_hist.HistogramKeeper`,
each passive party a :class:`~crypto.ckks_hist.HistogramEvaluator`.  Histogram
subtraction: per pair of siblings only one child is computed; the other is
``parent - child`` at the label party (in plaintext, after decryption).
"""

from fedcredit.protocols.secureboost.label import SecureBoostResult, run_secureboost_label
from fedcredit.protocols.secureboost.passive import run_secureboost_passive
from fedcredit.protocols.secureboost.scoring import (
    LabelScorer,
    label_margin,
    label_predict,
    parse_decisions,
    passive_decisions,
)
from fedcredit.protocols.secureboost.trees import (
    FeatureBinner,
    LabelModelPart,
    PassiveModelPart,
    SecureBoostConfig,
    SplitRule,
    train_plaintext_reference,
    train_plaintext_reference_tables,
)

__all__ = [
    "SecureBoostConfig",
    "FeatureBinner",
    "LabelModelPart",
    "PassiveModelPart",
    "SecureBoostResult",
    "run_secureboost_label",
    "run_secureboost_passive",
    "train_plaintext_reference",
    "train_plaintext_reference_tables",
    "SplitRule",
    "passive_decisions",
    "parse_decisions",
    "LabelScorer",
    "label_predict",
    "label_margin",
]
