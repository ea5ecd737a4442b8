"""`quartet-server serve`: a supervisor and N worker processes sharing one port.

One Python process uses one core (the GIL), so quartet runs a worker per core. The supervisor
prepares once what must happen once (the secret, migrations, the event types file, checking the
port is free), then forks the workers before any gRPC object exists, as gRPC requires (see
https://github.com/grpc/grpc/issues/16001). Each worker binds the same port with SO_REUSEPORT,
so the kernel spreads incoming connections over them. The supervisor serves the workers' summed
Prometheus metrics, forwards SIGTERM/SIGINT for a graceful stop, and stops everything if a
worker dies. Workers die with the supervisor, even when it is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import socket

from quartet import storage
from quartet.server import app
from quartet.server.settings import Settings

logger = logging.getLogger("quartet.server")

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; the exit status (0 after a clean stop)."""
    settings = app.with_secret(settings)  # one secret for every worker
    database = app.open_database(settings)
    storage.close(database)  # no connection may cross the fork
    settings = dataclasses.replace(settings, port=_claim_port(settings))
    ready_read, ready_write = os.pipe()
    cpus = sorted(os.sched_getaffinity(0))
    pin = settings.workers == len(cpus) > 1
    workers: dict[int, int] = {}
    for index in range(settings.workers):
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            _worker(settings, ready_write, cpus[index] if pin else None)  # never returns
        workers[pid] = index
    os.close(ready_write)
    with os.fdopen(ready_read) as ready:
        started = sum(1 for _ in zip(range(settings.workers), ready, strict=False))
    if started < settings.workers:
        logger.error("only %d of %d workers started", started, settings.workers)
        _stop(workers, signal.SIGKILL)
        return 1
    _serve_metrics(settings)
    logger.info(
        "quartet listening on %s (%d worker%s%s, database %s)",
        _address(settings),
        settings.workers,
        "s" if settings.workers > 1 else "",
        ", each pinned to a core" if pin else "",
        storage.redacted(settings.database_url),
    )
    return _supervise(workers, settings)


def _supervise(workers: dict[int, int], settings: Settings) -> int:
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            logger.info(
                "shutting down: finishing in-flight calls for up to %ss", settings.grace_seconds
            )
        _stop(workers, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while workers:
        pid, wait_status = os.wait()
        workers.pop(pid, None)
        _forget_metrics(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0:
            status = 1
        if not stopping:
            logger.error("worker %d exited unexpectedly (%d); stopping the others", pid, code)
            stopping = True
            status = 1
            _stop(workers, signal.SIGTERM)
    logger.info("stopped")
    return status


def _stop(workers: dict[int, int], signum: int) -> None:
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _worker(settings: Settings, ready: int, cpu: int | None) -> None:
    """A worker process: serve until SIGTERM/SIGINT, then exit (never return into the parent's
    code)."""
    status = 1
    try:
        _die_with_parent()
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        asyncio.run(_serve_worker(settings, ready))
        status = 0
    except BaseException:
        logger.exception("worker failed")
    finally:
        logging.shutdown()
        os._exit(status)


async def _serve_worker(settings: Settings, ready: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with app.running(settings, worker=True):
        os.write(ready, b"ready\n")
        os.close(ready)
        await stop.wait()


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the supervisor dies, however it dies."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def _claim_port(settings: Settings) -> int:
    """The port to serve on (a free one for port 0), after checking nobody listens on it.

    The workers share the port with SO_REUSEPORT, which would also let them share it silently
    with another server. So the supervisor first binds it without that option: that fails if
    anything listens there.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            probe.bind((settings.host, settings.port))
        except OSError as exc:
            raise app.PortInUse(
                f"cannot listen on {settings.address}: is the port in use? ({exc.strerror})"
            ) from None
        return int(probe.getsockname()[1])


def _address(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{host}:{settings.port}"


def _serve_metrics(settings: Settings) -> None:
    """Serve every worker's metrics, summed, at http://host:metrics_port/metrics."""
    if not settings.metrics_port:
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
    logger.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)


def _forget_metrics(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
