"""A party's fitted binning transform: what its model part stores so scoring bins exactly as training did.

Why a separate part: the vertical LR model files are unchanged; the job adds this
transform (under ``"binning"``) and the raw input schema (``"input_schema"``) to the
party's model JSON, and the online scorer applies it before the LR (``fedcredit.kinds``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fedcredit.binning import FeatureBins, indicator_matrix, woe_matrix
from fedcredit.errors import DataError

if TYPE_CHECKING:
    from fedcredit.data import Table

Mode = Literal["woe", "indicators"]


@dataclass(frozen=True)
class BinningTransform:
    """Selected features' bins and (``woe`` mode) their WOE values; ``apply`` turns raw codes into model columns."""

    mode: Mode
    features: tuple[FeatureBins, ...]
    woe: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.mode == "woe" and [len(w) for w in self.woe] != [b.n_bins for b in self.features]:
            raise DataError(f"binning transform: WOE values {[len(w) for w in self.woe]} do not fit the bins "
                            f"{[b.n_bins for b in self.features]}")

    @property
    def input_names(self) -> list[str]:
        return [b.feature for b in self.features]

    @property
    def output_names(self) -> list[str]:
        if self.mode == "woe":
            return self.input_names
        return [f"{b.feature}#bin{k}" for b in self.features for k in range(1, b.n_bins)]

    def schema_dict(self) -> dict[str, Any]:
        """The raw input schema (``fedcredit.data.InputSchema.to_dict`` layout) these bins read."""
        return {"feature_names": self.input_names, "kinds": [b.kind for b in self.features],
                "categories": {b.feature: list(b.categories) for b in self.features if b.kind == "categorical"}}

    def apply(self, X: np.ndarray) -> np.ndarray:
        """Raw columns (``input_names`` order, the model's category codes, NaN = missing) -> model columns."""
        if self.mode == "woe":
            return woe_matrix(self.features, self.woe, X)
        return indicator_matrix(self.features, X)[0]

    def apply_table(self, table: Table) -> tuple[Table, dict[str, int]]:
        """``table`` re-coded to the training categories and transformed: (table of model columns, unknown counts).

        An unknown category is missing (NaN -> missing bin), counted per feature.
        """
        from fedcredit.data import InputSchema

        schema = InputSchema.from_dict(self.schema_dict(), source=f"binning transform of party '{table.party}'")
        X, unknown = schema.encode(table)
        M = self.apply(X)
        return replace(table, X=M, feature_names=self.output_names, kinds=["numeric"] * M.shape[1], categories={},
                       _index=None), unknown

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "features": [b.to_dict() for b in self.features],
                "woe": [list(w) for w in self.woe]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str) -> BinningTransform:
        try:
            mode = d["mode"]
            if mode not in ("woe", "indicators"):
                raise DataError(f"{source}: binning transform mode {mode!r}; expected 'woe' or 'indicators'")
            feats = tuple(FeatureBins.from_dict(f, source=source) for f in d["features"])
            woe = tuple(tuple(float(v) for v in w) for w in d.get("woe") or ())
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source}: bad binning transform: {e!r}") from None
        return cls(mode, feats, woe)


def select(features: Sequence[FeatureBins], keep: Sequence[bool]) -> list[FeatureBins]:
    return [b for b, k in zip(features, keep) if k]


class BinnedOnline:
    """An online vertical-LR part (``OnlineLabel`` / ``OnlinePassive``) behind its binning transform.

    Scoring hands it raw columns (``feature_names`` = the raw input names, in the model's
    category codes; NaN = missing); it bins them exactly as training did and asks the LR.
    """

    def __init__(self, inner: Any, transform: BinningTransform) -> None:
        self.inner = inner
        self.transform = transform
        self.feature_names = transform.input_names
        self.input_schema = transform.schema_dict()

    def __getattr__(self, name: str) -> Any:  # label_party, passive_parties, model, ... of the LR part
        return getattr(self.inner, name)

    def score(self, X: np.ndarray, partials: Mapping[str, Any]) -> Any:
        return self.inner.score(self.transform.apply(X), partials)

    def answer(self, X: np.ndarray) -> np.ndarray | bytes:
        out = self.inner.answer(self.transform.apply(X))
        return out if isinstance(out, bytes) else np.asarray(out)  # bytes: a shared-weights part's Enc(X w)


def with_binning(inner: Any, raw: bytes, source: str) -> Any:
    """``inner`` wrapped in :class:`BinnedOnline` if the model JSON ``raw`` carries a ``"binning"`` transform."""
    import json

    try:
        doc = json.loads(bytes(raw).decode("utf-8", "replace"))
    except ValueError:
        return inner
    if not isinstance(doc, dict) or not isinstance(doc.get("binning"), dict):
        return inner
    return BinnedOnline(inner, BinningTransform.from_dict(doc["binning"], source=source))
