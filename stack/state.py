"""What the local stack keeps between runs: its JWT secret, and what a running stack serves.

The secret lives in ``<state dir>/secret`` (mode 0600) so tokens minted for
other users and teams (`fanout-local token`) stay valid across restarts;
``stack.json`` says where the running stack is (URL, Redis URL, demo user)
for tools such as the example web app, and is removed when the stack stops.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import Final

import jwt

from shared.config import ConfigError

SECRET_FILE: Final = "secret"  # noqa: S105 - a file name
STACK_FILE: Final = "stack.json"
DEMO_USER: Final = "demo"
DEMO_TEAM: Final = "demo"
_IDENT_RE: Final = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")


def _state_dir(path: str) -> Path:
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def stack_secret(state_dir: str, given: str = "") -> str:
    """`given` when set; otherwise the secret kept in the state dir, created on first use."""
    if given:
        return given
    path = _state_dir(state_dir) / SECRET_FILE
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
        secret = path.read_text().strip()
        if len(secret) < 32:
            raise ConfigError(f"{path} holds no usable secret (32 characters at least); delete it to get a new one")
        return secret
    secret = secrets.token_urlsafe(32)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as sink:
        sink.write(secret + "\n")
    return secret


def mint_token(secret: str, user: str, teams: list[str], ttl_s: int) -> str:
    """An HS256 token the stack's gateways accept for `user` in `teams`."""
    for name in (user, *teams):
        if not _IDENT_RE.fullmatch(name):
            raise ConfigError(f"{name!r} is not a user or team id (1-128 of A-Z a-z 0-9 _ . : @ -)")
    if ttl_s <= 0:
        raise ConfigError(f"--ttl must be positive, got {ttl_s}")
    now = int(time.time())
    return jwt.encode({"sub": user, "teams": teams, "iat": now, "exp": now + ttl_s}, secret)


def write_running(state_dir: str, details: dict[str, object]) -> Path:
    """Record where the running stack serves (replaced atomically)."""
    path = _state_dir(state_dir) / STACK_FILE
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(details, indent=2) + "\n")
    partial.replace(path)
    return path


def clear_running(state_dir: str) -> None:
    (Path(state_dir) / STACK_FILE).unlink(missing_ok=True)
