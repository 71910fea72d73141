"""Key-file writing shared by the crypto modules.

Why a helper: every secret we write must be created with mode 0600 from the first
byte (no chmod-after-write window), and no existing key may be replaced unless the
caller asked for it — a silently overwritten CA key orphans every issued cert.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from fedcredit.errors import ConfigError

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def refuse_existing(paths: Iterable[Path], force: bool, what: str) -> None:
    """Raise ConfigError naming the first existing path unless ``force``.

    Checked for *all* outputs before anything is written, so a refusal leaves the
    directory exactly as it was.
    """
    if force:
        return
    for path in paths:
        if path.exists():
            raise ConfigError(
                f"refusing to overwrite existing {what} file {path} "
                "(pass force=True / --force to replace it)"
            )


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically write ``data`` to ``path`` with ``mode`` set at creation time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_file(path: Path, what: str) -> bytes:
    """Read ``path`` or raise ConfigError naming the missing file and its role."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"missing {what} file {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
