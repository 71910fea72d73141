"""The one wire codec for protocol payloads: a JSON header plus named numeric arrays and opaque blobs.

Why one codec: every protocol message is "some public metadata + some numbers +
some ciphertexts".  Framing them one way means one decoder to harden: it never
unpickles (a peer cannot make us run code), accepts only numeric dtypes, and checks
every declared size against the bytes actually received *before* it allocates or
slices, so a hostile header cannot make it allocate more than the payload holds.

Layout (little-endian)::

    b"FCW1" | header_len u32 | header (UTF-8 JSON) | array buffers | blobs

``header = {"meta": {...}, "arrays": [[name, dtype, shape, nbytes], ...], "blobs": [[name, nbytes], ...]}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcredit.errors import DataError, ProtocolError

__all__ = ["pack", "unpack", "pack_arrays", "unpack_arrays", "pack_blobs", "unpack_blobs", "loads_json", "MAGIC",
           "b64_text", "b64_bytes"]

MAGIC = b"FCW1"
_HEAD = struct.Struct("<4sI")
#: A header larger than this is refused before it is parsed (headers carry names, shapes and small metadata).
MAX_HEADER_BYTES = 16 * 1024 * 1024
_NUMERIC = "biuf"
#: The dtype strings :func:`pack` writes (``a.dtype.str`` of a numeric array): byte order, kind, size.
_DTYPE_RE = re.compile(r"^[<>|=]?[biuf](1|2|4|8)$")


def pack(meta: Mapping[str, Any] | None = None, arrays: Mapping[str, np.ndarray] | None = None,
         blobs: Mapping[str, bytes] | None = None) -> bytes:
    """Frame ``meta`` (JSON-able), named numeric ``arrays`` and named opaque ``blobs`` into one payload."""
    specs: list[list[Any]] = []
    bufs: list[bytes] = []
    for name, a in (arrays or {}).items():
        a = np.ascontiguousarray(a)
        if a.dtype.kind not in _NUMERIC:
            raise TypeError(f"array '{name}' has non-numeric dtype {a.dtype}")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        b = a.tobytes()
        specs.append([str(name), a.dtype.str, list(a.shape), len(b)])
        bufs.append(b)
    blob_specs = [[str(name), len(b)] for name, b in (blobs or {}).items()]
    header = {"meta": dict(meta or {}), "arrays": specs, "blobs": blob_specs}
    h = json.dumps(header, separators=(",", ":"), allow_nan=True).encode("utf-8")
    return b"".join([_HEAD.pack(MAGIC, len(h)), h, *bufs, *(bytes(b) for b in (blobs or {}).values())])


def unpack(payload: bytes, *, what: str = "message") -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, bytes]]:
    """(meta, arrays, blobs) of a :func:`pack` payload; anything malformed is a ProtocolError naming ``what``.

    Arrays are read-only views into ``payload`` (no copy).
    """
    try:
        data = bytes(payload) if not isinstance(payload, bytes) else payload
        if len(data) < _HEAD.size:
            raise ValueError(f"{len(data)} bytes, shorter than the frame header")
        magic, hl = _HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            raise ValueError(f"bad magic {magic!r}")
        if hl > MAX_HEADER_BYTES or _HEAD.size + hl > len(data):
            raise ValueError(f"header of {hl} bytes does not fit the {len(data)}-byte payload")
        header = json.loads(data[_HEAD.size : _HEAD.size + hl].decode("utf-8"))
        if not isinstance(header, dict) or not isinstance(header.get("meta"), dict):
            raise ValueError("header is not an object with a 'meta' object")
        off = _HEAD.size + hl
        arrays: dict[str, np.ndarray] = {}
        for spec in _list(header.get("arrays"), "arrays"):
            name, dtype, shape, nbytes = spec
            if not isinstance(dtype, str) or not _DTYPE_RE.match(dtype):  # before numpy parses it (np.dtype("<01")
                raise ValueError(f"array '{name}': dtype {dtype!r} not allowed")  # is a SyntaxError)
            dt = np.dtype(dtype)
            shape = [int(s) for s in _list(shape, f"shape of '{name}'")]
            nbytes = int(nbytes)
            if any(s < 0 for s in shape) or nbytes != math.prod(shape) * dt.itemsize:
                raise ValueError(f"array '{name}': shape {shape} and {nbytes} bytes disagree")
            if off + nbytes > len(data):
                raise ValueError(f"array '{name}' truncated")
            arrays[str(name)] = np.frombuffer(data, dtype=dt, count=math.prod(shape), offset=off).reshape(shape)
            off += nbytes
        blobs: dict[str, bytes] = {}
        mv = memoryview(data)
        for spec in _list(header.get("blobs"), "blobs"):
            name, n = spec
            n = int(n)
            if n < 0 or off + n > len(data):
                raise ValueError(f"blob '{name}' truncated")
            blobs[str(name)] = bytes(mv[off : off + n])
            off += n
        if off != len(data):
            raise ValueError(f"{len(data) - off} trailing bytes")
        return header["meta"], arrays, blobs
    except RecursionError:  # json.loads of a deeply nested header
        raise ProtocolError(f"malformed {what}: header nests too deeply") from None
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError, OverflowError) as e:
        raise ProtocolError(f"malformed {what}: {e}") from None


#: JSON from another institution (control messages, artifact manifests and model files) nests a few levels;
#: deeper is an attack, not a message.
MAX_JSON_DEPTH = 32


def loads_json(payload: bytes, *, what: str, max_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """A small JSON object from a peer; anything else (not UTF-8, not JSON, not an object, nested
    deeper than :data:`MAX_JSON_DEPTH`, larger than ``max_bytes``) is a ProtocolError naming ``what``.

    Why one helper: ``json.loads`` raises RecursionError on deep nesting and a list where the
    caller expects an object turns every later ``.get`` into an AttributeError.
    """
    if len(payload) > max_bytes:
        raise ProtocolError(f"malformed {what}: {len(payload)} bytes, more than the {max_bytes}-byte limit")
    try:
        doc = json.loads(bytes(payload).decode("utf-8"))
    except RecursionError:
        raise ProtocolError(f"malformed {what}: nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"malformed {what}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"malformed {what}: expected a JSON object, got {type(doc).__name__}")
    if json_too_deep(doc, MAX_JSON_DEPTH):
        raise ProtocolError(f"malformed {what}: nests deeper than {MAX_JSON_DEPTH} levels")
    return doc


def json_too_deep(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests containers deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, (dict, list)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (obj.values() if isinstance(obj, dict) else obj))
    return False


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise ValueError(f"{what} is not a list")
    return v


def pack_arrays(arrays: Mapping[str, np.ndarray] | None = None, meta: Mapping[str, Any] | None = None) -> bytes:
    """Named numeric arrays + a JSON ``meta`` dict (no blobs)."""
    return pack(meta, arrays)


def unpack_arrays(payload: bytes, *, what: str = "message") -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) of :func:`pack_arrays`."""
    meta, arrays, _ = unpack(payload, what=what)
    return arrays, meta


def pack_blobs(blobs: Sequence[bytes], meta: Mapping[str, Any] | None = None) -> bytes:
    """An ordered list of opaque byte strings (e.g. serialized ciphertexts) + a JSON ``meta``."""
    return pack(meta, None, {str(i): b for i, b in enumerate(blobs)})


def unpack_blobs(payload: bytes, *, what: str = "message") -> tuple[list[bytes], dict[str, Any]]:
    """(blobs in order, meta) of :func:`pack_blobs`."""
    meta, _, blobs = unpack(payload, what=what)
    return list(blobs.values()), meta


def b64_text(raw: bytes | None) -> str:
    """Bytes (ciphertexts, contexts) as base64 text for a JSON model part."""
    return base64.b64encode(raw or b"").decode("ascii")


def b64_bytes(text: Any, source: str, key: str) -> bytes:
    """The bytes of a model part's base64 field ``key``; DataError naming ``source`` and the field otherwise."""
    if not isinstance(text, str):
        raise DataError(f"{source}: '{key}' must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error) as e:
        raise DataError(f"{source}: '{key}' is not base64: {e}") from None
