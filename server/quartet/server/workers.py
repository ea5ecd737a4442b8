"""`quartet server serve`: a supervisor and N worker processes sharing one port.

One Python process uses one core (the GIL), so quartet runs a worker per core. The supervisor
prepares once what must happen once (the secret, migrations, the event types file, checking the
port is free), then forks the workers before any gRPC object exists, as gRPC requires (see
https://github.com/grpc/grpc/issues/16001). Each worker binds the same port with SO_REUSEPORT,
so the kernel spreads incoming connections over them.

Like gunicorn's arbiter, the supervisor then stays a single thread that holds no gRPC object, so
that it can fork a replacement for a dead worker at any time as safely as at start; the summed
Prometheus metrics are served by a child process of their own for the same reason. It forwards
SIGTERM/SIGINT for a graceful stop, and gives up (stops everything, exits 1) on a crash loop:
more than MAX_DEATHS deaths within DEATH_WINDOW_SECONDS. Children die with the supervisor, even
when it is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import dataclasses
import logging
import os
import selectors
import signal
import socket
import time

from quartet import storage
from quartet.server import app, logs, metrics
from quartet.server.settings import Settings

logger = logging.getLogger("quartet.server")

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

# A crash loop: more than MAX_DEATHS children died within DEATH_WINDOW_SECONDS. Replacing them
# would only burn CPU and fill the log, so the supervisor stops and leaves it to the operator
# (or the orchestrator's back-off).
MAX_DEATHS = 5
DEATH_WINDOW_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class _Role:
    """What a child process does: serve gRPC as worker `index`, pinned to `cpu` if given; or,
    with no index, serve the metrics."""

    index: int | None
    cpu: int | None = None

    def __str__(self) -> str:
        return "metrics server" if self.index is None else f"worker {self.index}"


def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; the exit status (0 after a clean stop)."""
    settings = app.with_secret(settings)  # one secret for every worker
    database = app.open_database(settings)
    storage.close(database)  # no connection may cross the fork
    settings = dataclasses.replace(settings, port=_claim_port(settings))
    if settings.http_port:
        settings = dataclasses.replace(
            settings, http_port=_claim_port(settings, settings.http_port)
        )
    cores = pinned_cores(settings.workers)
    pin = cores[0] is not None
    roles = [_Role(index, cpu) for index, cpu in enumerate(cores)]
    if settings.metrics_port:
        roles.append(_Role(None))
    supervisor = _Supervisor(settings)
    if supervisor.start(roles):
        logger.info(
            "quartet listening on %s (%d worker%s%s, database %s)%s",
            _address(settings),
            settings.workers,
            "s" if settings.workers > 1 else "",
            ", each pinned to a core" if pin else "",
            storage.redacted(settings.database_url),
            f"; HTTP (Connect, gRPC-Web) on port {settings.http_port}"
            if settings.http_port
            else "",
        )
    return supervisor.run()


def pinned_cores(workers: int) -> list[int | None]:
    """The core each of `workers` workers is pinned to: one each when there is a worker per core
    (more than one), else none (None: the kernel places them)."""
    cpus = sorted(os.sched_getaffinity(0))
    if workers == len(cpus) > 1:
        return list(cpus)
    return [None] * workers


class _Supervisor:
    """The parent of every worker: starts them, replaces those that die, stops them all.

    One thread, woken by signals (through a self-pipe, as gunicorn's arbiter is) and by the
    "ready" messages children write to a shared pipe once they serve.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: dict[int, _Role] = {}
        self.starting: set[int] = set()  # children that have not said "ready" yet
        self.started = False  # every first child said "ready"
        self.stopping = False
        self.status = 0
        self._deaths: collections.deque[float] = collections.deque()  # when, within the window
        self._stop_requested = False
        self._unread = b""  # the start of a ready message not read whole yet
        self._ready_read, self._ready_write = os.pipe()
        self._wakeup_read, self._wakeup_write = os.pipe()
        for fd in (self._ready_read, self._wakeup_read, self._wakeup_write):
            os.set_blocking(fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._ready_read, selectors.EVENT_READ)
        self._selector.register(self._wakeup_read, selectors.EVENT_READ)
        signal.set_wakeup_fd(self._wakeup_write)
        for signum in (*_STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, self._on_signal)

    def start(self, roles: list[_Role]) -> bool:
        """Start a child per role; True once all serve, False if one failed (or a stop came)."""
        for role in roles:
            self._spawn(role)
        while self.starting and not self.stopping:
            self._poll()
        self.started = not self.stopping
        return self.started

    def run(self) -> int:
        """Supervise until every child has exited; the exit status."""
        while self.children:
            self._poll()
        logger.info("stopped")
        return self.status

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only note it: the loop acts on it (the wakeup fd has already woken it).
        if signum in _STOP_SIGNALS:
            self._stop_requested = True

    def _poll(self) -> None:
        """Wait for a signal or a ready message, then act on whatever happened."""
        self._selector.select()
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_read, 4096):
                pass
        self._read_ready()
        if self._stop_requested:
            self._stop_requested = False
            if not self.stopping:
                logger.info(
                    "shutting down: finishing in-flight calls for up to %ss",
                    self.settings.grace_seconds,
                )
            self.stopping = True
            self._signal_all(signal.SIGTERM)
        self._reap()

    def _read_ready(self) -> None:
        """Note the children that said "ready" (each writes its pid and a newline, atomically)."""
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self._ready_read, 4096):
                *lines, self._unread = (self._unread + data).split(b"\n")
                for line in lines:
                    self._ready(int(line))

    def _ready(self, pid: int) -> None:
        if pid in self.starting and self.started:  # a replacement
            logger.info("%s (pid %d) is serving", self.children[pid], pid)
        self.starting.discard(pid)

    def _reap(self) -> None:
        while self.children:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            role = self.children.pop(pid, None)
            if role is None:
                continue
            was_starting = pid in self.starting
            self.starting.discard(pid)
            _forget_metrics(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                if code != 0:
                    self.status = 1
            else:
                self._died(pid, role, _how_it_ended(code), was_starting)

    def _died(self, pid: int, role: _Role, how: str, was_starting: bool) -> None:
        """A child died unexpectedly: replace it, or give up on a crash loop."""
        what = f"{role} (pid {pid}) {how}{' while starting' if was_starting else ''}"
        if not self.started:  # a first start that fails is a configuration to fix
            logger.error("%s; stopping the others", what)
            self._give_up(signal.SIGKILL)
            return
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths[0] <= now - DEATH_WINDOW_SECONDS:
            self._deaths.popleft()
        if len(self._deaths) > MAX_DEATHS:
            logger.error(
                "%s: %d deaths within %g s is a crash loop; stopping the server",
                what,
                len(self._deaths),
                DEATH_WINDOW_SECONDS,
            )
            self._give_up(signal.SIGTERM)
            return
        replacement = self._spawn(role)
        metrics.worker_restarts.inc()
        logger.error("%s; replaced by pid %d", what, replacement)

    def _give_up(self, signum: int) -> None:
        self.stopping = True
        self.status = 1
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _spawn(self, role: _Role) -> int:
        """Fork a child for role; its pid. The child starts with SIGTERM and SIGINT blocked, so
        that a stop sent before it can handle one waits for it instead of being lost."""
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                try:
                    self._become(role)
                finally:
                    os._exit(1)  # never return into the supervisor's code
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.children[pid] = role
        self.starting.add(pid)
        return pid

    def _become(self, role: _Role) -> None:
        """In a new child: drop the supervisor's signal handling and pipes, then play role."""
        signal.set_wakeup_fd(-1)
        for signum in (*_STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        self._selector.close()
        for fd in (self._ready_read, self._wakeup_read, self._wakeup_write):
            os.close(fd)
        if role.index is None:
            _metrics_server(self.settings, self._ready_write)
        else:
            _worker(self.settings, self._ready_write, role.cpu, upkeep=role.index == 0)


def _how_it_ended(code: int) -> str:
    """How a child ended, from its exit code (negative: the signal that killed it)."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"


def _worker(settings: Settings, ready: int, cpu: int | None, *, upkeep: bool) -> None:
    """A worker process: serve until SIGTERM/SIGINT, then exit (never return into the parent's
    code). One worker, the first, keeps the events table (app.keep_events)."""
    status = 1
    try:
        _die_with_parent()
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        asyncio.run(_serve_worker(settings, ready, upkeep))
        status = 0
    except BaseException:
        logger.exception("worker failed")
    finally:
        logs.access.flush()
        logging.shutdown()
        os._exit(status)


async def _serve_worker(settings: Settings, ready: int, upkeep: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # a stop sent meanwhile, now
    async with app.running(settings, worker=True, upkeep=upkeep):
        os.write(ready, f"{os.getpid()}\n".encode())
        os.close(ready)
        await stop.wait()


def _metrics_server(settings: Settings, ready: int) -> None:
    """The metrics process: serve every worker's metrics, summed, at
    http://host:metrics_port/metrics until SIGTERM/SIGINT (never return into the parent's code)."""
    status = 1
    try:
        _die_with_parent()
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        # The server's threads inherit the blocked stop signals: they reach sigwait below.
        start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
        logger.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
        os.write(ready, f"{os.getpid()}\n".encode())
        os.close(ready)
        signal.sigwait(_STOP_SIGNALS)
        status = 0
    except BaseException:
        logger.exception("metrics server failed")
    finally:
        logging.shutdown()
        os._exit(status)


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the supervisor dies, however it dies."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def _claim_port(settings: Settings, port: int | None = None) -> int:
    """The port to serve on (a free one for port 0), after checking nobody listens on it.

    The workers share the port with SO_REUSEPORT, which would also let them share it silently
    with another server. So the supervisor first binds it without that option: that fails if
    anything listens there.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            probe.bind((settings.host, settings.port if port is None else port))
        except OSError as exc:
            address = settings.address if port is None else f"{settings.host}:{port}"
            raise app.PortInUse(
                f"cannot listen on {address}: is the port in use? ({exc.strerror})"
            ) from None
        return int(probe.getsockname()[1])


def _address(settings: Settings) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    return f"{host}:{settings.port}"


def _forget_metrics(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
