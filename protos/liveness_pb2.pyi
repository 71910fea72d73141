from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class HeartbeatRequest(_message.Message):
    __slots__ = ("interval_s",)
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    interval_s: float
    def __init__(self, interval_s: _Optional[float] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("liveness_timeout_s",)
    LIVENESS_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    liveness_timeout_s: float
    def __init__(self, liveness_timeout_s: _Optional[float] = ...) -> None: ...
