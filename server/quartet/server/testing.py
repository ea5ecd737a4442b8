"""Run a real quartet server in a background thread, for tests, benchmarks and examples."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Iterator

from quartet.server.app import running
from quartet.server.settings import Settings


@contextlib.contextmanager
def running_server(settings: Settings, *, port: int = 0) -> Iterator[str]:
    """Serve settings on 127.0.0.1 and a free port (or `port`) in a background thread; yield
    "host:port".

    The database is opened and migrated first. On exit the server stops with settings' grace.
    """
    with running_servers(settings, port=port, http_port=None) as (target, _):
        yield target


@contextlib.contextmanager
def running_servers(
    settings: Settings, *, port: int = 0, http_port: int | None = 0
) -> Iterator[tuple[str, str]]:
    """running_server, also serving the HTTP port (quartet.server.http) on a free port (or
    `http_port`); yield "host:port" of gRPC and the HTTP base URL ("http://host:port").

    The database is opened and migrated first. On exit the server stops with settings' grace.
    """
    settings = dataclasses.replace(settings, host="127.0.0.1", port=port)
    started = threading.Event()
    result: dict[str, object] = {}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with running(settings, http_port=http_port) as server:
                result["port"] = server.port
                result["http_port"] = server.http_port
                started.set()
                await stop.wait()
        except Exception as exc:  # reported to the caller of running_server
            result["error"] = exc
            started.set()

    thread = threading.Thread(
        target=lambda: loop.run_until_complete(main()), name="quartet-server", daemon=True
    )
    thread.start()
    started.wait()
    if "error" in result:
        thread.join()
        loop.close()
        raise result["error"]  # type: ignore[misc]
    try:
        yield f"127.0.0.1:{result['port']}", f"http://127.0.0.1:{result['http_port']}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()
