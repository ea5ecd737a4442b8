"""Authentication (who is calling) and authorization (may they), for every quartet service."""

from quartet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from quartet.server.auth.authenticator import Authenticator
from quartet.server.auth.policy import (
    RULES,
    Caller,
    admit,
    admit_publishable,
    current_caller,
    require_caller,
    rule_for,
)
from quartet.server.auth.service import AuthServicer
from quartet.server.auth.tokens import TokenIssuer
from quartet.server.registration import Service
from quartet.storage import accounts, applications, changes

SERVICE = Service(
    descriptor=auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
    servicer=lambda provided: AuthServicer(
        provided.runner, provided.authenticator, provided.settings
    ),
    add_to_server=auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
    needs_database=True,
    models=(
        accounts.Account,
        accounts.RefreshToken,
        accounts.LoginThrottle,
        applications.Application,
        applications.ApiKey,
        changes.ChangeCounter,  # announces changes of accounts, keys and event types too
    ),
)

__all__ = [
    "RULES",
    "SERVICE",
    "AuthServicer",
    "Authenticator",
    "Caller",
    "TokenIssuer",
    "admit",
    "admit_publishable",
    "current_caller",
    "require_caller",
    "rule_for",
]
