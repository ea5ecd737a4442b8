"""Where `quartet login` keeps its tokens: $XDG_CONFIG_HOME/quartet/credentials.json, mode 0600.

One entry per server (host:port), and the server logged in to last, which later commands talk
to when neither --server nor QUARTET_SERVER names one. The file is rewritten whole through a
private temporary file and a rename, so that it is never seen half written nor readable by others.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quartet.auth.v1 import auth_service_pb2 as auth_pb

DEFAULT_SERVER = "localhost:50051"


def directory() -> Path:
    """$XDG_CONFIG_HOME/quartet, or ~/.config/quartet."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "quartet"


def path() -> Path:
    return directory() / "credentials.json"


@dataclass
class Login:
    """One server's login: whose it is, its tokens, and how to reach the server."""

    email: str
    access_token: str
    refresh_token: str
    tls: bool = False
    ca_file: str = ""

    def pair(self) -> auth_pb.TokenPair:
        return auth_pb.TokenPair(access_token=self.access_token, refresh_token=self.refresh_token)


def _read() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path().read_text())
    except FileNotFoundError:
        return {"default": "", "servers": {}}
    return data


def _write(data: dict[str, Any]) -> None:
    folder = directory()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor, draft = tempfile.mkstemp(dir=folder, prefix=".credentials.")  # mode 0600
    with os.fdopen(descriptor, "w") as file:
        json.dump(data, file, indent=2)
    os.replace(draft, path())


def default_server() -> str:
    """The server logged in to last, or localhost:50051."""
    return str(_read().get("default") or DEFAULT_SERVER)


def load(server: str) -> Login | None:
    entry = _read()["servers"].get(server)
    return Login(**entry) if entry else None


def save(server: str, login: Login) -> None:
    """Keep server's login, and make it the default server."""
    data = _read()
    data["servers"][server] = asdict(login)
    data["default"] = server
    _write(data)


def update_tokens(server: str, pair: auth_pb.TokenPair) -> None:
    """Keep a refreshed pair (the refresh token is single-use: the old one is spent)."""
    data = _read()
    entry = data["servers"].get(server)
    if entry is not None:
        entry["access_token"] = pair.access_token
        entry["refresh_token"] = pair.refresh_token
        _write(data)


def forget(server: str | None) -> list[str]:
    """Remove server's login (every login if None); the servers forgotten."""
    data = _read()
    gone = list(data["servers"]) if server is None else [s for s in data["servers"] if s == server]
    for name in gone:
        del data["servers"][name]
    if data.get("default") in gone:
        data["default"] = ""
    if gone:
        _write(data)
    return gone
