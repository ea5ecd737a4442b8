"""Who may call what: the one table of method rules, and the caller of the current call."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from quartet.errors.v1 import error_reason_pb2
from quartet.server.errors import PermissionDenied, Unauthenticated

# What each kind of caller is allowed, by grant. Each account role includes the ones below it,
# up to admin. Only applications send events, so that every event records the application that
# sent it; an application may also read reference data, and nothing else.
GRANTS: dict[str, frozenset[str]] = {
    "user": frozenset({"user"}),
    "analyst": frozenset({"user", "analyst"}),
    "admin": frozenset({"user", "analyst", "admin"}),
    "application": frozenset({"application"}),
}


@dataclass(frozen=True)
class Caller:
    """Who is calling: an account (with its role) or an application."""

    kind: str  # "account" or "application"
    id: int
    role: str  # an account's role, or "application"

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
OPTIONAL = Rule(credentials="optional")
USERS = Rule(frozenset({"user"}))
ANALYSTS = Rule(frozenset({"analyst"}))
ADMINS = Rule(frozenset({"admin"}))
APPLICATIONS = Rule(
    frozenset({"application"}),
    hint="events are sent with an application's API key, so that the sender is recorded; "
    "an admin creates one with CreateApplication",
)
SIGNED_IN = Rule(frozenset({"user", "application"}))

RULES: dict[str, Rule] = {
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": OPEN,
    "/quartet.auth.v1.AuthService/CreateAccount": OPTIONAL,
    "/quartet.auth.v1.AuthService/Login": OPEN,
    "/quartet.auth.v1.AuthService/RefreshToken": OPEN,
    "/quartet.auth.v1.AuthService/GetCurrentAccount": USERS,
    "/quartet.auth.v1.AuthService/ListAccounts": ADMINS,
    "/quartet.auth.v1.AuthService/SetAccountRole": ADMINS,
    "/quartet.auth.v1.AuthService/DisableAccount": ADMINS,
    "/quartet.auth.v1.AuthService/EnableAccount": ADMINS,
    "/quartet.auth.v1.AuthService/CreateApplication": ADMINS,
    "/quartet.auth.v1.AuthService/ListApplications": ADMINS,
    "/quartet.auth.v1.AuthService/CreateApiKey": ADMINS,
    "/quartet.auth.v1.AuthService/RevokeApiKey": ADMINS,
    # Users compute and read their own scores; analysts and admins read everyone's (the servicer
    # enforces ownership).
    "/quartet.score.v1.ScoreService/CreateScore": USERS,
    "/quartet.score.v1.ScoreService/GetScore": USERS,
    "/quartet.score.v1.ScoreService/ListScores": USERS,
    # Events are sent with an application's key, and read by analysts.
    "/quartet.events.v1.EventService/SendEvent": APPLICATIONS,
    "/quartet.events.v1.EventService/SendEvents": APPLICATIONS,
    "/quartet.events.v1.EventService/StreamEvents": APPLICATIONS,
    "/quartet.events.v1.EventService/GetEvent": ANALYSTS,
    "/quartet.events.v1.EventService/ListEvents": ANALYSTS,
    "/quartet.events.v1.EventService/ListRejectedEvents": ANALYSTS,
    "/quartet.events.v1.EventService/CreateEventType": ADMINS,
    "/quartet.events.v1.EventService/ListEventTypes": SIGNED_IN,
    # Reference data: any signed-in account or application reads it.
    "/quartet.regions.v1.RegionService/ListRegions": SIGNED_IN,
    "/quartet.regions.v1.RegionService/ListProvinces": SIGNED_IN,
    "/quartet.regions.v1.RegionService/GetProvince": SIGNED_IN,
    "/quartet.regions.v1.RegionService/ListHealthRegions": SIGNED_IN,
    "/quartet.regions.v1.RegionService/GetHealthRegion": SIGNED_IN,
    "/quartet.regions.v1.RegionService/LookupFsa": SIGNED_IN,
    "/quartet.regions.v1.RegionService/BatchLookupFsas": SIGNED_IN,
    # Importing replaces the whole experiment data set; its report is for analysts.
    "/quartet.experiments.v1.ExperimentService/ImportExperimentData": ADMINS,
    "/quartet.experiments.v1.ExperimentService/GetExperimentReport": ANALYSTS,
    "/quartet.experiments.v1.ExperimentService/ListUserReports": ANALYSTS,
    "/quartet.experiments.v1.ExperimentService/GetUserReport": ANALYSTS,
    "/quartet.experiments.v1.ExperimentService/ListExperiments": ANALYSTS,
}

# A method missing from RULES is an oversight; it is admins-only until someone decides.
UNLISTED = ADMINS

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def rule_for(method: str) -> Rule:
    return RULES.get(method, UNLISTED)


def admit(rule: Rule, caller: Caller | None) -> None:
    """Record caller for this call, or raise if rule does not admit it."""
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
    _caller.set(caller)


def current_caller() -> Caller | None:
    """The authenticated caller of the current call (None if the method needs no credentials)."""
    return _caller.get()


def require_caller() -> Caller:
    caller = _caller.get()
    if caller is None:  # only reachable if a rule and its servicer disagree
        raise Unauthenticated(
            "this method needs credentials", reason=error_reason_pb2.CREDENTIALS_MISSING
        )
    return caller
