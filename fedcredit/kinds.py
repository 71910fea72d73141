"""Every kind of model part fedcredit trains, publishes and scores — one table.

Why one table: publishing (which part did training save?), artifacts (which peer
kinds must a joint model name?), the scoring service (how is a part loaded, and what
does it answer?) and export all need to know the kinds.  A new protocol adds its rows
here and nowhere else.

Online roles a loaded part plays (the protocol modules implement them):

* ``local`` — the whole model at one party (horizontal): ``predict_proba(X)``;
* ``label`` — ``score(X, partials) -> (pd, contributions)``, ``passive_parties``;
* ``passive`` — ``answer(X)`` -> what its ``answer_field`` of the ``PartialReply`` carries,
  ``label_party``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fedcredit.errors import ConfigError, DataError

__all__ = ["ModelKind", "KINDS", "kind", "kind_of_part", "load_part", "VERTICAL_KINDS", "LOCAL", "LABEL", "PASSIVE"]

Role = Literal["local", "label", "passive"]
LOCAL: Role = "local"
LABEL: Role = "label"
PASSIVE: Role = "passive"


def _horizontal(raw: bytes, source: str) -> Any:
    from fedcredit.models import load_model_bytes

    try:
        return load_model_bytes(raw, source=f"{source}: model.json")
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"{source}: model.json is not a horizontal model: {exc}") from None


def _vlr_label(raw: bytes, source: str) -> Any:
    from fedcredit.protocols.binning.transform import with_binning
    from fedcredit.protocols.vertical_lr import LabelModel, OnlineLabel

    part = OnlineLabel(LabelModel.from_json(bytes(raw).decode("utf-8", "replace"), source=f"{source}: model.json"))
    if part.card is not None:  # a scorecard bins raw rows itself (the transform's bins: checked at load)
        return part
    return with_binning(part, raw, f"{source}: model.json")  # a [model.binning] job's parts bin before the LR


def _vlr_passive(raw: bytes, source: str) -> Any:
    from fedcredit.protocols.binning.transform import with_binning
    from fedcredit.protocols.vertical_lr import OnlinePassive, PassiveModel

    part = OnlinePassive(PassiveModel.from_json(bytes(raw).decode("utf-8", "replace"), source=f"{source}: model.json"))
    if part.card is not None:
        return part
    return with_binning(part, raw, f"{source}: model.json")


def _sb_label(raw: bytes, source: str) -> Any:
    from fedcredit.protocols.secureboost.scoring import OnlineLabel
    from fedcredit.protocols.secureboost.trees import LabelModelPart

    return OnlineLabel(LabelModelPart.from_bytes(raw, source=source))


def _sb_passive(raw: bytes, source: str) -> Any:
    from fedcredit.protocols.secureboost.scoring import OnlinePassive
    from fedcredit.protocols.secureboost.trees import PassiveModelPart

    return OnlinePassive(PassiveModelPart.from_bytes(raw, source=source))


@dataclass(frozen=True)
class ModelKind:
    """One kind of model part: who holds it, what it pairs with, how it is recognised, loaded and answers."""

    name: str
    job_type: str
    role: Role
    #: kinds the *other* parties of a joint model hold (empty: the part scores alone)
    peers: tuple[str, ...]
    #: the tag a saved part carries (its ``kind`` or ``format`` field); None for horizontal global models
    format_tag: str | None
    #: ``model.json`` bytes (and a source for errors) -> the loaded online model
    load: Callable[[bytes, str], Any]
    #: passive kinds: the ``PartialReply`` field their answer travels in
    answer_field: Literal["partial_logits", "decisions", ""] = ""


KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("horizontal-lr", "horizontal", LOCAL, (), None, _horizontal),
    ModelKind("horizontal-mlp", "horizontal", LOCAL, (), None, _horizontal),
    ModelKind("vertical-lr-label", "vertical-lr", LABEL, ("vertical-lr-passive",), "vertical_lr/label", _vlr_label),
    ModelKind("vertical-lr-passive", "vertical-lr", PASSIVE, ("vertical-lr-label", "vertical-lr-passive"),
              "vertical_lr/passive", _vlr_passive, "partial_logits"),
    ModelKind("secureboost-label", "secureboost", LABEL, ("secureboost-passive",), "fedcredit.secureboost.label/1",
              _sb_label),
    ModelKind("secureboost-passive", "secureboost", PASSIVE, ("secureboost-label", "secureboost-passive"),
              "fedcredit.secureboost.passive/1", _sb_passive, "decisions"),
)}
VERTICAL_KINDS = frozenset(k for k, v in KINDS.items() if v.peers)
_BY_TAG = {k.format_tag: k for k in KINDS.values() if k.format_tag}


def kind(name: str) -> ModelKind:
    """The kind called ``name``; ConfigError lists the known ones."""
    k = KINDS.get(name)
    if k is None:
        raise ConfigError(f"unknown model kind {name!r}; expected one of {', '.join(KINDS)}")
    return k


def kind_of_part(doc: Mapping[str, Any]) -> ModelKind | None:
    """The kind of a saved model-part document, recognised by its tag (``kind`` or ``format`` field)."""
    tag = doc.get("kind") if isinstance(doc.get("kind"), str) else doc.get("format")
    return _BY_TAG.get(str(tag)) if tag is not None else None


def load_part(kind_name: str, raw: bytes, source: str) -> Any:
    """Load a model part of kind ``kind_name`` from its ``model.json`` bytes for online use."""
    return kind(kind_name).load(raw, source)
