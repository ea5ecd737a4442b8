"""Who may call what: the method rules the protos declare, and the caller of the current call."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from quartet.api.v1 import access_pb2
from quartet.auth.v1 import auth_service_pb2
from quartet.client import contract
from quartet.errors.v1 import error_reason_pb2
from quartet.server.errors import PermissionDenied, Unauthenticated


def _grants() -> dict[str, frozenset[str]]:
    """What each kind of caller is allowed, by grant: each account role holds its own grant and
    those of the roles below it (in auth.v1.Role's order); an application holds its own only."""
    role = auth_service_pb2.Role
    names = [role.Name(n).removeprefix("ROLE_").lower() for n in sorted(role.values()) if n]
    grants = {name: frozenset(names[: i + 1]) for i, name in enumerate(names)}
    return {**grants, "application": frozenset({"application"})}


GRANTS: dict[str, frozenset[str]] = _grants()


@dataclass(frozen=True)
class Caller:
    """Who is calling: an account (with its role) or an application."""

    kind: str  # "account" or "application"
    id: int
    role: str  # an account's role, or "application"
    # A publishable key's allowed origins (None for every other credential): see
    # admit_publishable.
    origins: frozenset[str] | None = None

    def may(self, grant: str) -> bool:
        return grant in GRANTS.get(self.role, frozenset())

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True)
class Rule:
    """Any one of `grants` admits a caller. `credentials`: "required", "optional" (used when
    sent: CreateAccount lets an admin pick the role) or "none" (never read). `hint` is added to
    a refusal, to say what would be admitted."""

    grants: frozenset[str] = frozenset()
    credentials: str = "required"
    hint: str = ""


OPEN = Rule(credentials="none")
# A method whose proto declares no access is an oversight (a test fails on it): admins only.
UNLISTED = Rule(frozenset({"admin"}))


def rule_from(access: access_pb2.Access) -> Rule:
    """The rule a method's `(quartet.api.v1.access)` option declares."""
    credentials = access_pb2.Credentials.Name(access.credentials)
    return Rule(
        grants=frozenset(
            access_pb2.Grant.Name(grant).removeprefix("GRANT_").lower() for grant in access.grants
        ),
        # Unspecified is the strictest: required.
        credentials={"CREDENTIALS_OPTIONAL": "optional", "CREDENTIALS_NONE": "none"}.get(
            credentials, "required"
        ),
        hint=access.hint,
    )


def _rules() -> dict[str, Rule]:
    rules = {}
    for method in contract.methods():
        access = contract.access(method)
        rules[contract.path(method)] = UNLISTED if access is None else rule_from(access)
    return rules


# Health checks and reflection are gRPC's own services, whose protos carry no quartet option:
# they are open, as load balancers, orchestrators and tools such as grpcurl call them before
# anyone signs in, and they reveal nothing a caller could not learn from the protos.
GRPC_OPEN_METHODS = (
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)
RULES: dict[str, Rule] = {**dict.fromkeys(GRPC_OPEN_METHODS, OPEN), **_rules()}

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)
_rule: contextvars.ContextVar[Rule] = contextvars.ContextVar("rule", default=UNLISTED)


def rule_for(method: str) -> Rule:
    return RULES.get(method, UNLISTED)


def admit(rule: Rule, caller: Caller | None) -> None:
    """Record caller (and the rule that admitted it) for this call, or raise if rule does not
    admit it."""
    check(rule, caller)
    _caller.set(caller)
    _rule.set(rule)


def check(rule: Rule, caller: Caller | None) -> None:
    """Raise if rule does not admit caller."""
    if caller is None:
        if rule.credentials == "required":
            raise Unauthenticated(
                "this method needs `authorization: Bearer <token or API key>` metadata",
                reason=error_reason_pb2.CREDENTIALS_MISSING,
            )
    elif rule.grants and not any(caller.may(grant) for grant in rule.grants):
        hint = f": {rule.hint}" if rule.hint else ""
        raise PermissionDenied(
            f"{caller.kind} with role {caller.role} may not call this method{hint}",
            metadata={"role": caller.role},
        )


# What a publishable key (meant for web pages, where anyone can read it) may call: sending its
# own application's events, nothing else.
PUBLISHABLE_METHODS = frozenset(
    {"/quartet.events.v1.EventService/SendEvent", "/quartet.events.v1.EventService/SendEvents"}
)


def admit_publishable(method: str, caller: Caller | None, origin: str | None) -> None:
    """Raise unless a publishable key's call is one it may make from an origin its admin allowed.
    The origin is the browser's `Origin` header: a browser cannot forge it, so it keeps other
    sites' pages from using the key; it stops no one else, hence the narrow methods and the
    rate limits of the HTTP port."""
    if caller is None or caller.origins is None:
        return
    if method not in PUBLISHABLE_METHODS:
        raise PermissionDenied(
            "a publishable key may only call SendEvent and SendEvents",
            metadata={"method": method},
        )
    if origin is None or origin not in caller.origins:
        raise PermissionDenied(
            f"the origin {origin or '(none)'} is not allowed for this publishable key",
            reason=error_reason_pb2.ORIGIN_NOT_ALLOWED,
            metadata={"origin": origin or ""},
        )


def current_caller() -> Caller | None:
    """The authenticated caller of the current call (None if the method needs no credentials)."""
    return _caller.get()


def current_rule() -> Rule:
    """The rule that admitted the current call's caller."""
    return _rule.get()


def require_caller() -> Caller:
    caller = _caller.get()
    if caller is None:  # only reachable if a rule and its servicer disagree
        raise Unauthenticated(
            "this method needs credentials", reason=error_reason_pb2.CREDENTIALS_MISSING
        )
    return caller
