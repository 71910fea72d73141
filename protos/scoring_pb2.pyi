from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("model_version", "id", "features", "exposure", "categories", "missing")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CategoriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    EXPOSURE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    id: str
    features: _containers.ScalarMap[str, float]
    exposure: float
    categories: _containers.ScalarMap[str, str]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_version: _Optional[str] = ..., id: _Optional[str] = ..., features: _Optional[_Mapping[str, float]] = ..., exposure: _Optional[float] = ..., categories: _Optional[_Mapping[str, str]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("name", "contribution", "source", "code")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    contribution: float
    source: str
    code: str
    def __init__(self, name: _Optional[str] = ..., contribution: _Optional[float] = ..., source: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class ScorecardPoints(_message.Message):
    __slots__ = ("base", "features", "parties")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PartiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BASE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    base: float
    features: _containers.ScalarMap[str, float]
    parties: _containers.ScalarMap[str, float]
    def __init__(self, base: _Optional[float] = ..., features: _Optional[_Mapping[str, float]] = ..., parties: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoreReply(_message.Message):
    __slots__ = ("id", "pd", "score", "decision", "credit_limit", "reasons", "party_contributions", "model_version", "fallback", "fallback_reason", "notes", "points")
    class PartyContributionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    PD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    PARTY_CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    pd: float
    score: float
    decision: str
    credit_limit: float
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    party_contributions: _containers.ScalarMap[str, float]
    model_version: str
    fallback: bool
    fallback_reason: str
    notes: _containers.RepeatedScalarFieldContainer[str]
    points: ScorecardPoints
    def __init__(self, id: _Optional[str] = ..., pd: _Optional[float] = ..., score: _Optional[float] = ..., decision: _Optional[str] = ..., credit_limit: _Optional[float] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., party_contributions: _Optional[_Mapping[str, float]] = ..., model_version: _Optional[str] = ..., fallback: _Optional[bool] = ..., fallback_reason: _Optional[str] = ..., notes: _Optional[_Iterable[str]] = ..., points: _Optional[_Union[ScorecardPoints, _Mapping]] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("model_version", "requests")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    requests: _containers.RepeatedCompositeFieldContainer[ScoreRequest]
    def __init__(self, model_version: _Optional[str] = ..., requests: _Optional[_Iterable[_Union[ScoreRequest, _Mapping]]] = ...) -> None: ...

class ScoreBatchReply(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[ScoreReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[ScoreReply, _Mapping]]] = ...) -> None: ...

class PartialRequest(_message.Message):
    __slots__ = ("model_hash", "ids", "run_id")
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    model_hash: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    def __init__(self, model_hash: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ...) -> None: ...

class PartialReply(_message.Message):
    __slots__ = ("party", "model_hash", "kind", "partial_logits", "decisions", "encrypted_partials")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    MODEL_HASH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_LOGITS_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTED_PARTIALS_FIELD_NUMBER: _ClassVar[int]
    party: str
    model_hash: str
    kind: str
    partial_logits: _containers.RepeatedScalarFieldContainer[float]
    decisions: bytes
    encrypted_partials: bytes
    def __init__(self, party: _Optional[str] = ..., model_hash: _Optional[str] = ..., kind: _Optional[str] = ..., partial_logits: _Optional[_Iterable[float]] = ..., decisions: _Optional[bytes] = ..., encrypted_partials: _Optional[bytes] = ...) -> None: ...
