from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Frame(_message.Message):
    __slots__ = ("kind", "session", "sender", "receiver", "tag", "seq", "payload", "error", "resume", "acks")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        DATA: _ClassVar[Frame.Kind]
        HELLO: _ClassVar[Frame.Kind]
        HELLO_ACK: _ClassVar[Frame.Kind]
        ERROR: _ClassVar[Frame.Kind]
        PEER_GONE: _ClassVar[Frame.Kind]
        BYE: _ClassVar[Frame.Kind]
        ACK: _ClassVar[Frame.Kind]
        RESUME: _ClassVar[Frame.Kind]
        PEER_SUSPENDED: _ClassVar[Frame.Kind]
        PEER_RESUMED: _ClassVar[Frame.Kind]
        PEER_JOINED: _ClassVar[Frame.Kind]
    DATA: Frame.Kind
    HELLO: Frame.Kind
    HELLO_ACK: Frame.Kind
    ERROR: Frame.Kind
    PEER_GONE: Frame.Kind
    BYE: Frame.Kind
    ACK: Frame.Kind
    RESUME: Frame.Kind
    PEER_SUSPENDED: Frame.Kind
    PEER_RESUMED: Frame.Kind
    PEER_JOINED: Frame.Kind
    class AcksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    kind: Frame.Kind
    session: str
    sender: str
    receiver: str
    tag: str
    seq: int
    payload: bytes
    error: str
    resume: bool
    acks: _containers.ScalarMap[str, int]
    def __init__(self, kind: _Optional[_Union[Frame.Kind, str]] = ..., session: _Optional[str] = ..., sender: _Optional[str] = ..., receiver: _Optional[str] = ..., tag: _Optional[str] = ..., seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., error: _Optional[str] = ..., resume: _Optional[bool] = ..., acks: _Optional[_Mapping[str, int]] = ...) -> None: ...

class DirectoryRequest(_message.Message):
    __slots__ = ("names", "wait_seconds")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    wait_seconds: float
    def __init__(self, names: _Optional[_Iterable[str]] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class PartyCertificate(_message.Message):
    __slots__ = ("name", "role", "cert_pem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    cert_pem: bytes
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., cert_pem: _Optional[bytes] = ...) -> None: ...

class DirectoryReply(_message.Message):
    __slots__ = ("parties", "missing")
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    parties: _containers.RepeatedCompositeFieldContainer[PartyCertificate]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, parties: _Optional[_Iterable[_Union[PartyCertificate, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...
