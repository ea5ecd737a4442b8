"""The composition root: build the gRPC server from settings and a database, run it, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import peewee
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from quartet import storage
from quartet.server import budgets, events, http, logs, metrics, reflection
from quartet.server.auth import Authenticator, TokenIssuer
from quartet.server.calls import CallCore
from quartet.server.coherence import kept_coherent
from quartet.server.http import HttpServer
from quartet.server.interceptors import CallInterceptor
from quartet.server.registration import Provided
from quartet.server.services import DATABASE_SERVICES, MEMORY_SERVICES, SERVICE_NAMES, SERVICES
from quartet.server.settings import Settings, development_secret
from quartet.storage import retention, scores
from quartet.storage.base import utcnow
from quartet.storage.events import latest_event_types

logger = logging.getLogger(__name__)

# How each worker keeps the health of the database services true. Every PROBE_INTERVAL seconds
# it checks the SQLite files (a few system calls: still the file opened, still writable); every
# REFRESH_INTERVAL it also writes to the database (storage.probe_writes) and reloads the event
# types (a fallback: a schema registered through another process is announced, and reloaded
# within about a second, by quartet.server.coherence). Once a call found
# the database unavailable, and for as long as it stays so, the write comes every PROBE_INTERVAL:
# the server turns NOT_SERVING, and SERVING again, within about that much of the change.
PROBE_INTERVAL = 1.0
REFRESH_INTERVAL = 10.0
# How often one process of a server (see `running`) creates the event partitions ahead, this far
# past the clock skew, and applies the retention (quartet.storage.retention).
MAINTENANCE_INTERVAL = 3600.0
PARTITIONS_AHEAD = datetime.timedelta(days=14)


class PortInUse(RuntimeError):
    """The configured address cannot be bound, most likely because another process holds it."""


@dataclass
class Server:
    """A built quartet server: start it, then stop it (gracefully) once."""

    grpc_server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    runner: storage.DatabaseRunner
    event_writer: storage.BatchWriter[Any, Any]
    checkpointer: storage.WalCheckpointer
    event_types: events.Registry
    score_writer: storage.BatchWriter[Any, Any]
    authenticator: Authenticator
    http: HttpServer | None = None  # the Connect and gRPC-Web port, when configured
    _serving: bool = False

    @property
    def http_port(self) -> int | None:
        return None if self.http is None else self.http.port

    async def start(self) -> None:
        await self.grpc_server.start()
        if self.http is not None:
            self.http.start()
        for name in MEMORY_SERVICES:
            await self.health.set(name, _status(True))
        problem = await self.refresh()
        if problem is not None:
            logger.warning("database unavailable: %s", problem)
        self._serving = problem is None
        await self._set_health(_status(self._serving))

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to grace seconds, then release."""
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            await asyncio.gather(self.http.stop(), self.grpc_server.stop(grace))
        else:
            await self.grpc_server.stop(grace)
        # In-flight sends waited for their commits above; now nothing can queue any more.
        self.event_writer.close()
        self.score_writer.close()
        self.checkpointer.close()
        self.runner.close()
        metrics.publish()  # the last second's calls, before the worker exits
        logs.access.flush()  # and their access-log lines

    async def refresh(self) -> str | None:
        """Reload the event types and write to the database; what failed, or None."""
        try:
            since = self.event_types.generation
            self.event_types.update(await self.runner.run(latest_event_types), since)
            await self.runner.run(storage.probe_writes, self.runner.database)
        except Exception as exc:
            return str(exc) or type(exc).__name__
        return None

    async def watch(
        self, interval: float = PROBE_INTERVAL, refresh_interval: float = REFRESH_INTERVAL
    ) -> None:
        """Keep every service's health in step with the database (see PROBE_INTERVAL)."""
        refreshed = time.monotonic()
        failures = self._failures()
        while True:
            await asyncio.sleep(interval)
            due = (
                not self._serving
                or self._failures() != failures
                or time.monotonic() - refreshed >= refresh_interval
            )
            problem = await self._check_files()
            if problem is None and due:
                problem = await self.refresh()
                refreshed = time.monotonic()
            failures = self._failures()
            serving = problem is None
            if serving != self._serving:
                self._serving = serving
                if serving:
                    logger.warning("database available again: SERVING")
                else:
                    logger.warning("database unavailable, NOT_SERVING: %s", problem)
                await self._set_health(_status(serving))

    async def _check_files(self) -> str | None:
        try:
            await asyncio.to_thread(storage.check_files, self.runner.database)
        except storage.DatabaseUnavailable as exc:
            return str(exc)
        return None

    def _failures(self) -> int:
        """How many calls and event or score batches found the database unavailable so far."""
        return (
            self.runner.unavailable + self.event_writer.unavailable + self.score_writer.unavailable
        )

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ("", *DATABASE_SERVICES):
            await self.health.set(name, status)


def _status(serving: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    if serving:
        return health_pb2.HealthCheckResponse.SERVING
    return health_pb2.HealthCheckResponse.NOT_SERVING


def build_server(
    settings: Settings,
    database: peewee.Database,
    *,
    reuse_port: bool = False,
    http_port: int | None = None,
) -> Server:
    """Register every service, health and reflection on a new server bound to settings.address,
    and serve them over HTTP too (quartet.server.http) on http_port (None: settings.http_port,
    where 0 means no HTTP port).

    Must run inside the event loop that will serve. Raises PortInUse if the address is taken:
    grpc.so_reuseport=0 makes a second bind fail instead of silently sharing the port. Worker
    processes pass reuse_port=True to share it, after their supervisor checked it was free.
    """
    runner = storage.DatabaseRunner(database, settings.db_threads)
    issuer = TokenIssuer(
        settings.secret,
        access_ttl=datetime.timedelta(minutes=settings.access_token_minutes),
        refresh_ttl=datetime.timedelta(days=settings.refresh_token_days),
    )
    authenticator = Authenticator(issuer, runner)
    limits = budgets.Limits(
        signed_in_calls=settings.max_concurrent_rpcs,
        anonymous_calls=settings.max_anonymous_calls,
        anonymous_streams=settings.max_anonymous_streams,
        streams=settings.max_streams,
        streams_per_caller=settings.max_streams_per_caller,
        reply_bytes=settings.max_reply_bytes,
    )
    core = CallCore(authenticator, budgets.Budgets(limits))
    server = grpc.aio.server(
        interceptors=[CallInterceptor(core)],
        options=_options(settings, reuse_port),
        # The sum of the interceptor's call budgets, so that no kind of call can fill it and
        # starve the others; the budgets refuse first, with details.
        maximum_concurrent_rpcs=limits.calls,
    )
    registry = events.Registry()  # loaded by Server.start()
    event_writer = storage.BatchWriter(
        database,
        events.write_batch,
        delay=settings.event_commit_delay_ms / 1000,
        name="quartet-events",
    )
    score_writer = storage.BatchWriter(database, scores.write_scores, name="quartet-scores")
    checkpointer = storage.WalCheckpointer(database)
    provided = Provided(
        settings=settings,
        runner=runner,
        authenticator=authenticator,
        event_writer=event_writer,
        event_types=registry,
        score_writer=score_writer,
    )
    servicers = []
    for service in SERVICES:  # as each domain package registers it (quartet.server.services)
        servicer = service.servicer(provided)
        service.add_to_server(servicer, server)
        servicers.append((service.descriptor, servicer))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable((*SERVICE_NAMES, health.SERVICE_NAME), server)
    try:
        if settings.tls:
            credentials = grpc.ssl_server_credentials([_key_pair(settings)])
            port = server.add_secure_port(settings.address, credentials)
        else:
            port = server.add_insecure_port(settings.address)
        http_server = None
        if http_port is None:
            http_port = settings.http_port or None
        if http_port is not None:
            address = f"{settings.host}:{http_port}"
            sock = http.bind(settings.host, http_port, reuse_port=reuse_port)
            app = http.application(core, settings, runner, servicers)
            http_server = http.HttpServer(app, sock, settings.grace_seconds)
    except (RuntimeError, OSError) as exc:
        event_writer.close()
        score_writer.close()
        checkpointer.close()
        runner.close()
        if isinstance(exc, OSError):
            raise PortInUse(f"cannot listen on {address} (HTTP): is the port in use?") from exc
        raise PortInUse(f"cannot listen on {settings.address}: is the port in use?") from exc
    return Server(
        server,
        port,
        health_servicer,
        runner,
        event_writer,
        checkpointer,
        registry,
        score_writer,
        authenticator,
        http_server,
    )


async def keep_events(settings: Settings, interval: float = MAINTENANCE_INTERVAL) -> None:
    """Create the event partitions ahead and apply the retention, now and every interval."""
    ahead = datetime.timedelta(seconds=settings.event_clock_skew_seconds) + PARTITIONS_AHEAD
    stop = threading.Event()
    while True:
        work = asyncio.ensure_future(
            asyncio.to_thread(
                retention.maintain,
                utcnow(),
                days=settings.event_retention_days,
                ahead=ahead,
                stop=stop,
            )
        )
        try:
            removed = await asyncio.shield(work)
        except asyncio.CancelledError:  # the server stops: after the batch in progress
            stop.set()
            await asyncio.wait([work])
            raise
        except Exception as exc:
            logger.warning("cannot keep the events table (again in %g s): %s", interval, exc)
        else:
            if removed:
                logger.info(
                    "retention removed %d events, %d rejected events, partitions %s",
                    removed.events,
                    removed.rejected,
                    ", ".join(removed.partitions) or "none",
                )
        await asyncio.sleep(interval)


def _options(settings: Settings, reuse_port: bool) -> list[tuple[str, int]]:
    return [
        ("grpc.so_reuseport", int(reuse_port)),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls one connection may have open at once, as
        # Envoy's edge configuration limits them (100), so that a few connections cannot hold
        # a worker's whole budget of streams.
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        # Ping idle connections every minute and drop those that do not answer within 20 s, so
        # that clients gone without a goodbye (NAT, crashed hosts) do not hold resources.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept client keepalive pings every 10 s at most; a client pinging faster is cut off.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def _connections(settings: Settings) -> int:
    """Pooled connections: one per database thread, the event loop's (SQLite reads run there),
    the event and score writers', the WAL checkpointer's, the events' upkeep, and one to
    spare."""
    return settings.db_threads + 6


def _key_pair(settings: Settings) -> tuple[bytes, bytes]:
    try:
        return Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS key or certificate: {exc}") from None


def open_database(settings: Settings) -> peewee.Database:
    """Open, bind and migrate the configured database."""
    database = storage.open_database(settings.database_url, max_connections=_connections(settings))
    storage.bind(database)
    applied = storage.migrate(database)
    if applied:
        logger.info("applied migrations %s", ", ".join(applied))
    if settings.event_types_file:
        registered = events.register_file(database, Path(settings.event_types_file))
        for event_type in registered:
            logger.info(
                "registered event type %s/%s version %d",
                event_type.category,
                event_type.name,
                event_type.version,
            )
    return database


def with_secret(settings: Settings) -> Settings:
    """settings, with the development secret kept in the data directory if none is configured
    (production settings without a secret do not validate)."""
    if settings.secret:
        return settings
    secret, path, made = development_secret(settings.database_url)
    logger.log(
        logging.WARNING if made else logging.INFO,
        "QUARTET_SECRET is not set: tokens are signed with the development secret %s %s "
        "(production requires QUARTET_SECRET)",
        "just made in" if made else "kept in",
        path,
    )
    return dataclasses.replace(settings, secret=secret)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, *, worker: bool = False, upkeep: bool = True, http_port: int | None = None
) -> AsyncIterator[Server]:
    """Open the database, then start the server; on exit, stop it gracefully. With upkeep,
    also keep the events table (keep_events): one process per server does, not every worker.

    A worker (one of several processes on one port) finds the database already prepared by its
    supervisor, and shares the port. It never creates the database: should the file be gone by
    the time it starts (deleted under the server, then this worker replaced a dead one), every
    call is refused as for the other workers, rather than served from a new, empty database.
    """
    if worker:
        database = storage.open_database(
            settings.database_url, max_connections=_connections(settings), create=False
        )
        storage.bind(database)
    else:
        settings = with_secret(settings)
        database = open_database(settings)
    server = build_server(settings, database, reuse_port=worker, http_port=http_port)
    # Listening before the first load of the caches, so that no change in between is missed.
    async with kept_coherent(database, server.authenticator, server.event_types, server.runner):
        await server.start()
        tasks = [asyncio.create_task(server.watch())]
        if upkeep:
            tasks.append(asyncio.create_task(keep_events(settings)))
        try:
            yield server
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            await server.stop(settings.grace_seconds)
