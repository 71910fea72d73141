"""The project's one owner-only, atomic file writer (keys, model parts, artifacts, state).

Why one helper, and why in crypto: every secret we write — keys, model parts, the
PSI intersection, artifact files — must be created with its mode from the first byte
(no chmod-after-write window), be complete or absent after a crash (temp file, fsync,
rename), and never replace an existing file unless the caller asked for it (a silently
overwritten CA key orphans every issued cert).  crypto is the bottom layer, so every
other package can use this one writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

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


def write_file(path: Path, data: bytes, mode: int = SECRET_MODE, *, exclusive: bool = False,
               what: str = "output") -> Path:
    """Atomically write ``data`` to ``path`` with ``mode`` set at creation time; returns ``path``.

    ``exclusive``: refuse (ConfigError naming the file) if ``path`` already exists.
    """
    path = Path(path)
    if exclusive and path.exists():
        raise ConfigError(f"refusing to overwrite existing {what} file {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if the path appeared meanwhile: never replaces
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except FileExistsError:
        _unlink(tmp)
        raise ConfigError(f"refusing to overwrite {what} file {path} (it appeared while writing)") from None
    except BaseException:
        _unlink(tmp)
        raise
    return path


def private_dir(path: Path, what: str) -> str | None:
    """Create ``path`` owner-only (0700), or make an existing one so; a warning to print when it was loose.

    Decision: a state directory with group/other bits is *tightened*, not refused — its
    files are written 0600 anyway, so closing the directory restores the invariant — and
    the caller prints the returned warning so it is never silent (the operator should ask
    who could read it meanwhile).  A path that is a symlink, not a directory, or owned by
    another user is refused (ConfigError naming it): someone else controls it.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is not a plain directory (symlinks are refused): point the config at a real one")
    if st.st_uid != os.getuid():
        raise ConfigError(f"{what} {path} is owned by uid {st.st_uid}, not by this user ({os.getuid()}); refusing to use it")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if not loose:
        return None
    os.chmod(path, 0o700)
    return (f"warning: {what} {path} had mode {stat.S_IMODE(st.st_mode):04o} (group/other access); "
            "tightened to 0700 — check who could read it")


def write_text(path: Path, text: str, mode: int = SECRET_MODE, *, exclusive: bool = False) -> Path:
    """:func:`write_file` for UTF-8 text."""
    return write_file(path, text.encode("utf-8"), mode, exclusive=exclusive)


def fsync_dir(path: Path) -> None:
    """Make a directory's new entries durable (after a rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


def read_file(path: Path, what: str) -> bytes:
    """Read ``path`` or raise ConfigError naming the missing file and its role."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"missing {what} file {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None


def read_secret(path: Path, what: str) -> bytes:
    """:func:`read_file` for a private key: refused (ConfigError) if group or others may read or write it.

    Refused rather than tightened, like ssh: a key others could read must be treated as
    exposed, and the operator has to decide that (chmod 600, or re-issue it).
    """
    path = Path(path)
    check_secret_mode(path, what)
    return read_file(path, what)


def check_secret_mode(path: Path, what: str) -> None:
    """ConfigError if an existing ``path`` has any group/other permission bit (see :func:`read_secret`)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return  # read_file names the missing file
    if mode & 0o077:
        raise ConfigError(
            f"{what} file {path} has mode {mode:04o}: group/others may access it. Treat the key as exposed; "
            f"if it was not, `chmod 600 {path}`"
        )


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created 0600): one writer at a time across processes
    and threads (each holder opens its own descriptor), e.g. a party's ClientApps and its officer's CLI."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, SECRET_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
