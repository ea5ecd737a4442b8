"""client.health: the standard gRPC health service, and a command for container health checks."""

from __future__ import annotations

import argparse
import sys

from grpc_health.v1 import health_pb2

from quartet.client import _aio_base, _base
from quartet.client._base import Call, call

SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"]


def _serving(response: health_pb2.HealthCheckResponse) -> bool:
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


class HealthCalls:
    """The health service's calls, described once for both clients."""

    @staticmethod
    def check(service: str = "", *, timeout: float | None = None) -> Call[bool]:
        """Whether service (a full name such as "quartet.score.v1.ScoreService", or "" for the
        whole server) is SERVING. QuartetError if the server cannot be reached."""
        request = health_pb2.HealthCheckRequest(service=service)
        return call(SERVICE, "Check", request, health_pb2.HealthCheckResponse, timeout, _serving)


class Health(_base.Service):
    """The standard grpc.health.v1.Health service, through `Client.health`."""

    SERVICE = SERVICE
    check = _base.unary(HealthCalls.check)


class AsyncHealth(_aio_base.AsyncService):
    """The standard grpc.health.v1.Health service, through `quartet.client.aio.Client.health`."""

    SERVICE = SERVICE
    check = _aio_base.unary(HealthCalls.check)


def main() -> None:
    """`python -m quartet.client.health [TARGET]`: exit 0 if the server is SERVING, else 1."""
    from quartet.client._client import Client
    from quartet.client._errors import QuartetError

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--service", default="", help="a service's full name; default the server")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    args = parser.parse_args()
    try:
        with Client(args.target, tls=args.tls, timeout=args.timeout) as client:
            serving = client.health.check(args.service)
    except QuartetError as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        sys.exit(1)
    print("SERVING" if serving else "NOT_SERVING")
    sys.exit(0 if serving else 1)
