"""Authentication (who is calling) and authorization (may they), for every quartet service."""

from quartet.server.auth.authenticator import Authenticator
from quartet.server.auth.policy import (
    RULES,
    Caller,
    admit,
    current_caller,
    require_caller,
    rule_for,
)
from quartet.server.auth.service import AuthServicer
from quartet.server.auth.tokens import TokenIssuer

__all__ = [
    "RULES",
    "AuthServicer",
    "Authenticator",
    "Caller",
    "TokenIssuer",
    "admit",
    "current_caller",
    "require_caller",
    "rule_for",
]
