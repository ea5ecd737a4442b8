"""Account security (issue 12, items 10-13): login throttling, disabled and deleted accounts,
self sign-up, and weak production secrets. Through a real server, on every backend."""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from quartet.server.settings import GOOD_SECRET_COMMAND, Settings, SettingsError

# --- item 13: weak production secrets -------------------------------------------------------------

WEAK = [
    "a" * 32,
    "password" * 4,
    "Password1!" * 4,
    "abc" * 11,
    "0123456789" * 4,
    "change-me-change-me-change-me-now",
    "aaaabbbbccccddddeeeeffffgggghhhh",
    "short-but-random-Zq8",
]


@pytest.mark.parametrize("secret", WEAK)
def test_production_refuses_an_obviously_weak_secret(secret: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings(secret=secret, environment="production").validated()
    assert "QUARTET_SECRET" in str(refused.value) and GOOD_SECRET_COMMAND in str(refused.value)
    Settings(secret=secret).validated()  # development takes anything


def test_production_accepts_random_secrets() -> None:
    makers: list[Callable[[], str]] = [
        lambda: secrets.token_urlsafe(24),  # 32 characters
        lambda: secrets.token_hex(16),  # 32 hex digits: 128 bits
        lambda: secrets.token_urlsafe(48),  # what the message suggests
        lambda: secrets.token_hex(64),
    ]
    for make in makers:
        for _ in range(500):
            secret = make()
            assert Settings(secret=secret, environment="production").validated().secret == secret
    _, *arguments = shlex.split(GOOD_SECRET_COMMAND)
    command = subprocess.run(
        [sys.executable, *arguments], capture_output=True, text=True, check=True
    )
    Settings(secret=command.stdout.strip(), environment="production").validated()


@pytest.mark.parametrize("secret", ["a" * 32, "password" * 4])
def test_the_server_refuses_to_start_with_a_weak_secret(tmp_path: Any, secret: str) -> None:
    env = {
        **os.environ,
        "QUARTET_ENV": "production",
        "QUARTET_SECRET": secret,
        "DATABASE_URL": f"sqlite:///{tmp_path}/q.db",
    }
    result = subprocess.run(
        [sys.executable, "-m", "quartet.server", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "QUARTET_SECRET" in result.stderr and "secrets.token_urlsafe(48)" in result.stderr
    assert secret not in result.stderr  # never printed
