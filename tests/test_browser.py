"""The browser snippet (docs/examples/browser) in a real headless Chromium, driven by
playwright-core (tests/browser): a page on another origin sends the seed's three example events
with a publishable key and they are stored; a page on an origin the key does not allow is
refused by CORS; a page closed right after queueing its events still delivers them."""

from __future__ import annotations

import contextlib
import functools
import http.server
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from quartet.client import Client

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "browser"
DRIVER = REPO / "tests" / "browser"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def page_server() -> Iterator[str]:
    """The example folder served on a port of its own: another origin than quartet's."""
    handler = functools.partial(_Quiet, directory=str(EXAMPLE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def target(http_servers: tuple[str, str]) -> str:
    return http_servers[0]


@pytest.fixture
def page() -> Iterator[str]:
    with page_server() as origin:
        yield origin


def drive(url: str, mode: str) -> str:
    done = subprocess.run(
        ["node", str(DRIVER / "drive.mjs"), url, mode],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=DRIVER,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def open_page(page: str, quartet: str, key: str, session: str, **extra: str) -> str:
    query = urlencode({"quartet": quartet, "key": key, "session": session, **extra})
    return f"{page}/index.html?{query}"


def stored(client: Client, session: str, expected: int) -> list[str]:
    deadline = time.monotonic() + 10
    while True:
        names = sorted(e.name for e in client.events.list(session_id=session).events)
        if len(names) >= expected or time.monotonic() > deadline:
            return names
        time.sleep(0.2)


def key_for(client: Client, origin: str) -> str:
    application = client.auth.create_application(f"web-{uuid.uuid4().hex[:8]}").application
    return client.auth.create_api_key(application.id, allowed_origins=[origin]).api_key


def test_page_sends_the_example_events(
    http_servers: tuple[str, str], client: Client, page: str
) -> None:
    session = str(uuid.uuid4())
    status = drive(open_page(page, http_servers[1], key_for(client, page), session), "flush")
    assert status.startswith("sent:"), status
    assert stored(client, session, 3) == ["cta click", "pageview", "submit"]


def test_page_on_another_origin_is_refused(
    http_servers: tuple[str, str], client: Client, page: str
) -> None:
    session = str(uuid.uuid4())
    key = key_for(client, "https://shop.example.com")
    status = drive(open_page(page, http_servers[1], key, session), "flush")
    # The preflight is refused, so the browser does not even send the events.
    assert status.startswith("refused:"), status
    assert stored(client, session, 0) == []


def test_closing_page_still_delivers(
    http_servers: tuple[str, str], client: Client, page: str
) -> None:
    session = str(uuid.uuid4())
    url = open_page(page, http_servers[1], key_for(client, page), session, stay="1")
    assert drive(url, "close") == "closed"
    assert stored(client, session, 3) == ["cta click", "pageview", "submit"]
