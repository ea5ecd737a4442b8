"""The composition root: build the gRPC server from settings and a database, run it, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import peewee
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from quartet import storage
from quartet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from quartet.experiments.v1 import experiment_service_pb2, experiment_service_pb2_grpc
from quartet.score.v1 import score_service_pb2, score_service_pb2_grpc
from quartet.server.auth import Authenticator, AuthServicer, TokenIssuer
from quartet.server.experiments import ExperimentServicer
from quartet.server.interceptors import CallInterceptor
from quartet.server.score import ScoreServicer
from quartet.server.settings import Settings

logger = logging.getLogger(__name__)

# The full names of the services this server offers, as health checks and reflection know them.
SERVICE_NAMES = (
    auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
    score_service_pb2.DESCRIPTOR.services_by_name["ScoreService"].full_name,
    experiment_service_pb2.DESCRIPTOR.services_by_name["ExperimentService"].full_name,
)
HEALTH_CHECK_INTERVAL = 10.0  # seconds between database pings of the health watchdog


class PortInUse(RuntimeError):
    """The configured address cannot be bound, most likely because another process holds it."""


@dataclass
class Server:
    """A built quartet server: start it, then stop it (gracefully) once."""

    grpc_server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    runner: storage.DatabaseRunner

    async def start(self) -> None:
        await self.grpc_server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, let in-flight calls finish for up to grace seconds, then release."""
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        self.runner.close()

    async def watch_database(self, interval: float = HEALTH_CHECK_INTERVAL) -> None:
        """Keep the health status of every service in step with the database's reachability."""
        serving = True
        while True:
            await asyncio.sleep(interval)
            try:
                await self.runner.run(storage.ping, self.runner.database)
                ok = True
            except Exception:
                ok = False
            if ok != serving:
                serving = ok
                logger.warning("database %s", "reachable again" if ok else "unreachable")
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)


def build_server(settings: Settings, database: peewee.Database) -> Server:
    """Register every service, health and reflection on a new server bound to settings.address.

    Must run inside the event loop that will serve. Raises PortInUse if the address is taken:
    grpc.so_reuseport=0 makes a second bind fail instead of silently sharing the port.
    """
    runner = storage.DatabaseRunner(database, settings.db_threads)
    issuer = TokenIssuer(
        settings.secret,
        access_ttl=datetime.timedelta(minutes=settings.access_token_minutes),
        refresh_ttl=datetime.timedelta(days=settings.refresh_token_days),
    )
    authenticator = Authenticator(issuer, runner)
    server = grpc.aio.server(
        interceptors=[CallInterceptor(authenticator)],
        options=[("grpc.so_reuseport", 0)],
    )
    auth_service_pb2_grpc.add_AuthServiceServicer_to_server(
        AuthServicer(runner, authenticator), server
    )
    score_service_pb2_grpc.add_ScoreServiceServicer_to_server(ScoreServicer(runner), server)
    experiment_service_pb2_grpc.add_ExperimentServiceServicer_to_server(
        ExperimentServicer(runner), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if settings.tls:
            credentials = grpc.ssl_server_credentials([_key_pair(settings)])
            port = server.add_secure_port(settings.address, credentials)
        else:
            port = server.add_insecure_port(settings.address)
    except RuntimeError as exc:
        runner.close()
        raise PortInUse(f"cannot listen on {settings.address}: is the port in use?") from exc
    return Server(server, port, health_servicer, runner)


def _key_pair(settings: Settings) -> tuple[bytes, bytes]:
    try:
        return Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS key or certificate: {exc}") from None


def open_database(settings: Settings) -> peewee.Database:
    """Open, bind and migrate the configured database."""
    # One connection per database thread, plus headroom for the health watchdog's ping.
    database = storage.open_database(settings.database_url, max_connections=settings.db_threads + 2)
    storage.bind(database)
    applied = storage.migrate(database)
    if applied:
        logger.info("applied migrations %s", ", ".join(applied))
    return database


def with_secret(settings: Settings) -> Settings:
    """settings, with a secret generated for this run if none is configured (development only:
    production settings without a secret do not validate)."""
    if settings.secret:
        return settings
    logger.warning(
        "QUARTET_SECRET is not set: tokens are signed with a secret generated for this run and "
        "stop working when the server restarts. Set QUARTET_SECRET (production requires it)."
    )
    return dataclasses.replace(settings, secret=secrets.token_urlsafe(48))


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Server]:
    """Open the database, then start the server; on exit, stop it gracefully."""
    settings = with_secret(settings)
    database = open_database(settings)
    server = build_server(settings, database)
    await server.start()
    watchdog = asyncio.create_task(server.watch_database())
    try:
        yield server
    finally:
        watchdog.cancel()
        await server.stop(settings.grace_seconds)


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running(settings) as server:
        host = settings.host if ":" not in settings.host else f"[{settings.host}]"
        logger.info(
            "quartet listening on %s:%d (database %s)",
            host,
            server.port,
            storage.redacted(settings.database_url),
        )
        await stop.wait()
        logger.info(
            "shutting down: finishing in-flight calls for up to %ss", settings.grace_seconds
        )
    logger.info("stopped")
