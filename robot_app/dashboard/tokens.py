"""The dashboard's bearer tokens: each a name and a role, kept as a salted hash, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from robot_app.common.files import describe_validation, write_atomic
from robot_app.common.logs import utc_now

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[str, ...] = get_args(Role)  # each role may do what the ones before it may
TOKENS_FILE = "tokens.json"


class TokenError(ValueError):
    """A token name, role or file the store refuses; the message says which."""


class Identity(BaseModel):
    """Who a request comes from."""

    model_config = ConfigDict(frozen=True)
    name: str
    role: Role

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    role: Role
    salt: str
    digest: str
    created_at: str


def _digest(token: str, salt: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + token.encode()).hexdigest()


class TokenStore:
    """tokens.json in the dashboard's folder, mode 600; written whole, atomically. Tokens themselves are never
    stored: whoever holds the file cannot use it to log in."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / TOKENS_FILE
        self._stamp: tuple[int, int] | None = None  # (inode, mtime): write_atomic makes a new file each time
        self._entries: list[_Entry] = []
        self._read()

    def _read(self) -> None:
        """Read the file again if it changed: a token that `robot-app dashboard token remove` took away (in another
        process) stops working at the next request."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._entries = None, []
            return
        stamp = (stat.st_ino, stat.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            self._entries = [_Entry.model_validate(entry) for entry in json.loads(self.path.read_text())]
        except ValidationError as error:
            raise TokenError(f"{self.path}: not a token file ({describe_validation(error)}); keep it and check it "
                             "by hand") from None
        except (ValueError, TypeError) as error:
            raise TokenError(f"{self.path}: not a token file ({error}); keep it and check it by hand") from None
        self._stamp = stamp

    def add(self, name: str, role: str) -> str:
        """A new token for `name` with `role`; it is shown this once."""
        self._read()
        if role not in ROLES:
            raise TokenError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise TokenError(f"token name {name!r}: use letters, digits, '-', '_' and '.'")
        if any(entry.name == name for entry in self._entries):
            raise TokenError(f"a token named {name!r} exists; remove it first to replace it")
        token, salt = secrets.token_urlsafe(32), secrets.token_hex(16)
        self._entries.append(_Entry(name=name, role=role, salt=salt, digest=_digest(token, salt),
                                    created_at=utc_now()))
        self._write()
        return token

    def remove(self, name: str) -> None:
        self._read()
        if not any(entry.name == name for entry in self._entries):
            raise TokenError(f"no token named {name!r}")
        self._entries = [entry for entry in self._entries if entry.name != name]
        self._write()

    def list(self) -> list[dict]:
        self._read()
        return [{"name": e.name, "role": e.role, "created_at": e.created_at} for e in self._entries]

    def identify(self, token: str) -> Identity | None:
        """The holder of `token`, or None. Every entry is compared, each in constant time, so the time taken says
        nothing about which entry, or how much of one, matched."""
        self._read()
        found = None
        for entry in self._entries:
            if hmac.compare_digest(_digest(token, entry.salt), entry.digest):
                found = Identity(name=entry.name, role=entry.role)
        return found

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps([e.model_dump() for e in self._entries], indent=1).encode(), 0o600)
        stat = self.path.stat()
        self._stamp = (stat.st_ino, stat.st_mtime_ns)
