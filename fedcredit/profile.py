"""The operator's CLI profile: which coordinator ``fedcredit train | runs | status`` talk to, as whom.

Why: every operator command needs the coordinator's Control address and an operator
credential directory; typing ``--control`` and ``--identity-dir`` on every call is what
new users get wrong.  ``fedcredit login`` stores them once in a profile file in the
standard place, and each value can still be overridden per call.

Precedence, per value: command-line flag > environment (``FEDCREDIT_CONTROL``,
``FEDCREDIT_IDENTITY_DIR``, ``FEDCREDIT_NAME``) > the job file's ``[control]`` (``train``
only) > the profile file.  The profile file is ``$FEDCREDIT_PROFILE`` if set, else
``$XDG_CONFIG_HOME/fedcredit/profile.toml`` (default ``~/.config/fedcredit/profile.toml``).
It holds no secret (an address, a directory, a name), but it is written owner-only like
every file the project writes.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from crypto.files import write_text
from fedcredit.errors import ConfigError

__all__ = ["Connection", "ProfileFile", "profile_path", "load_profile", "save_profile", "resolve_connection",
           "ENV_CONTROL", "ENV_IDENTITY_DIR", "ENV_NAME", "ENV_PROFILE"]

ENV_CONTROL = "FEDCREDIT_CONTROL"
ENV_IDENTITY_DIR = "FEDCREDIT_IDENTITY_DIR"
ENV_NAME = "FEDCREDIT_NAME"
ENV_PROFILE = "FEDCREDIT_PROFILE"

HOW_TO = (
    "set one with: fedcredit login --control HOST:PORT --identity-dir DIR "
    f"(or pass --control/--identity-dir, or set {ENV_CONTROL} and {ENV_IDENTITY_DIR})"
)


class ProfileFile(BaseModel):
    """The profile file's content; an unknown key is an error (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")
    control: str
    identity_dir: Path
    name: str = "operator"


@dataclass(frozen=True)
class Connection:
    """Where and as whom to reach the Control service, and where each value came from (for errors)."""

    control: str
    identity_dir: Path
    name: str
    source: str


def profile_path() -> Path:
    """``$FEDCREDIT_PROFILE``, else ``$XDG_CONFIG_HOME/fedcredit/profile.toml`` (XDG default ``~/.config``)."""
    explicit = os.environ.get(ENV_PROFILE)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "fedcredit" / "profile.toml"


def load_profile(path: Path | None = None) -> ProfileFile | None:
    """The stored profile, or None when there is none; a broken file is a ConfigError naming it."""
    path = path or profile_path()
    if not path.exists():
        if os.environ.get(ENV_PROFILE) and path == profile_path():
            raise ConfigError(f"{ENV_PROFILE}={path}: no such profile file; {HOW_TO}")
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the CLI profile: {e}") from None
    try:
        prof = ProfileFile.model_validate(data)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(top)'}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{path}: {msgs} (expected keys: control, identity_dir, name)") from None
    if not prof.identity_dir.is_absolute():
        prof.identity_dir = (path.parent / prof.identity_dir).resolve()
    return prof


def _toml_str(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def save_profile(control: str, identity_dir: Path, name: str = "operator", path: Path | None = None) -> Path:
    """Write the profile (absolute identity directory, so it works from any working directory)."""
    path = path or profile_path()
    text = (
        "# fedcredit CLI profile (written by `fedcredit login`; flags and FEDCREDIT_* variables override it)\n"
        f"control = {_toml_str(control)}\n"
        f"identity_dir = {_toml_str(str(Path(identity_dir).expanduser().resolve()))}\n"
        f"name = {_toml_str(name)}\n"
    )
    write_text(path, text)
    return path


def resolve_connection(
    control: str | None = None,
    identity_dir: str | Path | None = None,
    name: str | None = None,
    *,
    job_control: object | None = None,
) -> Connection:
    """Each value from the first of: flag, environment, the job's ``[control]``, the profile file.

    Raises a ConfigError saying how to configure one when neither an address nor a
    credential directory can be found.
    """
    prof = load_profile()
    job_addr = getattr(job_control, "address", None)
    job_ident = getattr(job_control, "identity_dir", None)
    job_name = getattr(job_control, "name", None) if job_addr else None
    sources: list[str] = []

    def pick(flag: object, env: str, job: object, stored: object, what: str) -> object:
        for value, where in ((flag, f"--{what}"), (os.environ.get(env) or None, env), (job, "the job's [control]"),
                             (stored, f"profile {profile_path()}")):
            if value:
                sources.append(f"{what} from {where}")
                return value
        return None

    addr = pick(control, ENV_CONTROL, job_addr, prof.control if prof else None, "control")
    ident = pick(identity_dir, ENV_IDENTITY_DIR, job_ident, prof.identity_dir if prof else None, "identity-dir")
    who = pick(name, ENV_NAME, job_name, prof.name if prof else None, "name") or "operator"
    if not addr or not ident:
        missing = " and ".join(w for w, v in (("the coordinator's control address", addr),
                                              ("the operator identity directory", ident)) if not v)
        raise ConfigError(f"no CLI connection configured: {missing} not set; {HOW_TO}")
    return Connection(str(addr), Path(str(ident)).expanduser(), str(who), "; ".join(sources))
