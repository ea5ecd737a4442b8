"""AuthService: accounts, logins and tokens, applications and their API keys."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
from buf.validate import validate_pb2
from email_validator import EmailNotValidError, validate_email

from quartet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from quartet.errors.v1 import error_reason_pb2
from quartet.server.auth.authenticator import Authenticator, account_disabled, account_gone
from quartet.server.auth.passwords import hash_password, needs_rehash, verify_password
from quartet.server.auth.policy import current_caller, require_caller
from quartet.server.auth.throttle import Throttle
from quartet.server.auth.tokens import Issued, TokenIssuer, new_api_key
from quartet.server.errors import PermissionDenied, Unauthenticated, Violations
from quartet.server.pagination import decode_page_token, page_size, paged
from quartet.server.settings import Settings
from quartet.server.timestamps import to_timestamp
from quartet.storage import DatabaseRunner, accounts, applications
from quartet.storage.base import utcnow

Context = grpc.aio.ServicerContext[Any, Any]
pb = auth_service_pb2

ROLES = {"user": pb.ROLE_USER, "analyst": pb.ROLE_ANALYST, "admin": pb.ROLE_ADMIN}
ROLE_NAMES = {value: name for name, value in ROLES.items()}
_PASSWORD_RULES = pb.CreateAccountRequest.DESCRIPTOR.fields_by_name["password"].GetOptions()
# What CreateAccount's contract accepts (its buf.validate rule), for `quartet-server create-admin`.
PASSWORD_LENGTH = (
    _PASSWORD_RULES.Extensions[validate_pb2.field].string.min_len,
    _PASSWORD_RULES.Extensions[validate_pb2.field].string.max_len,
)
LOGIN_FAILED = "the email and password do not match an account"


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(
        self, runner: DatabaseRunner, authenticator: Authenticator, settings: Settings
    ) -> None:
        self._db = runner
        self._authenticator = authenticator
        self._issuer: TokenIssuer = authenticator.issuer
        self._signup_open = settings.signup_open
        self._throttle = Throttle(settings, runner)

    async def CreateAccount(
        self, request: pb.CreateAccountRequest, context: Context
    ) -> pb.CreateAccountResponse:
        caller = current_caller()
        by_admin = caller is not None and caller.may("admin")
        if not by_admin and not self._signup_open:
            raise PermissionDenied(
                "self sign-up is closed on this server: ask an admin to create your account",
                reason=error_reason_pb2.SIGNUP_CLOSED,
            )
        violations = Violations()
        email = _valid_email(request.email, violations)
        violations.raise_if_any()
        role = ROLE_NAMES.get(request.role, "user")
        if role != "user" and not by_admin:
            raise PermissionDenied(f"only an admin may create an account with role {role}")
        # A stranger's sign-up that hits a taken email is counted as a failure of its address,
        # as a failed login is: it tells who is registered, so it must not be repeated quickly.
        peer = context.peer()
        if not by_admin:
            await self._throttle.attempt(None, peer)
        password_hash = await asyncio.to_thread(hash_password, request.password)
        account = await self._db.run(accounts.create_account, email, password_hash, role)
        forgiven = None if by_admin else self._throttle.forgiveness(None, peer)
        return pb.CreateAccountResponse(
            account=account_message(account), tokens=await self._tokens(account, forgiven)
        )

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.TokenPair:
        # Counted, and refused if throttled, before the password is hashed: a refusal costs no
        # hash. Unknown emails are counted alike, so the throttle tells nothing either.
        peer = context.peer()
        await self._throttle.attempt(request.email, peer)
        # An unknown email gets the same answer, after the same work, as a wrong password.
        account = await self._db.run(accounts.find_account, request.email)
        encoded = account.password_hash if account else None
        if not await asyncio.to_thread(verify_password, request.password, encoded):
            raise Unauthenticated(LOGIN_FAILED, reason=error_reason_pb2.LOGIN_FAILED)
        assert account is not None and encoded is not None
        if account.disable_time is not None:  # said only to who knows the password
            await self._throttle.succeeded(request.email, peer)
            raise account_disabled()
        if needs_rehash(encoded):
            rehashed = await asyncio.to_thread(hash_password, request.password)
            await self._db.run(accounts.set_password_hash, account.id, rehashed)
        # The success is forgiven with the refresh token's row: one write after the count.
        return await self._tokens(account, self._throttle.forgiveness(request.email, peer))

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context: Context) -> pb.TokenPair:
        claims = self._issuer.verify_refresh(request.refresh_token)
        now = utcnow()
        # The replacement is signed first and recorded in the transaction that uses up the old
        # token, so a concurrent exchange that loses (and revokes the login) revokes it too.
        refresh, new_claims = self._issuer.refresh(claims.account_id, claims.family, now)
        token, account = await self._db.run(
            accounts.use_refresh_token, claims.jti, now, new_claims.jti, refresh.expire_time
        )
        if token is None:
            if await self._db.run(accounts.find_account_by_id, claims.account_id) is None:
                raise account_gone()  # its tokens went with it
            raise Unauthenticated("the refresh token is not valid")
        if account is None:
            raise Unauthenticated(
                "the refresh token was already used, so it leaked: every refresh token of this "
                "login is now revoked (access tokens already issued still work until they "
                "expire); log in again",
                reason=error_reason_pb2.CREDENTIALS_REVOKED,
            )
        if account.disable_time is not None:
            raise account_disabled()
        access = self._issuer.access(account.id, account.role, now)
        return _token_pair(access, refresh)

    async def GetCurrentAccount(
        self, request: pb.GetCurrentAccountRequest, context: Context
    ) -> pb.Account:
        return account_message(await self._db.run(accounts.get_account, require_caller().id))

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: Context
    ) -> pb.ListAccountsResponse:
        limit = page_size(request)
        after = decode_page_token(request, (int,))
        rows = await self._db.run(
            accounts.list_accounts, limit=limit + 1, after_id=after[0] if after else None
        )
        page, token = paged(request, rows, limit, lambda row: (row.id,))
        return pb.ListAccountsResponse(
            accounts=[account_message(a) for a in page], next_page_token=token
        )

    async def SetAccountRole(
        self, request: pb.SetAccountRoleRequest, context: Context
    ) -> pb.Account:
        account = await self._db.run(
            accounts.set_role, request.account_id, ROLE_NAMES[request.role]
        )
        self._authenticator.forget_account(account.id)
        return account_message(account)

    async def DisableAccount(
        self, request: pb.DisableAccountRequest, context: Context
    ) -> pb.Account:
        violations = Violations()
        violations.check(
            request.account_id != require_caller().id,
            "account_id",
            "must not be your own account (another admin may disable it)",
        )
        violations.raise_if_any()
        return await self._set_disabled(request.account_id, True)

    async def EnableAccount(self, request: pb.EnableAccountRequest, context: Context) -> pb.Account:
        return await self._set_disabled(request.account_id, False)

    async def _set_disabled(self, account_id: int, disabled: bool) -> pb.Account:
        account = await self._db.run(accounts.set_disabled, account_id, disabled, utcnow())
        self._authenticator.forget_account(account.id)
        return account_message(account)

    async def CreateApplication(
        self, request: pb.CreateApplicationRequest, context: Context
    ) -> pb.CreateApplicationResponse:
        name = request.name.strip()
        full_key, key_id, secret_hash = new_api_key()
        application, key = await self._db.run(
            applications.create_application, name, key_id, secret_hash
        )
        return pb.CreateApplicationResponse(
            application=application_message(application, [key]), api_key=full_key
        )

    async def ListApplications(
        self, request: pb.ListApplicationsRequest, context: Context
    ) -> pb.ListApplicationsResponse:
        limit = page_size(request)
        after = decode_page_token(request, (int,))
        rows = await self._db.run(
            applications.list_applications, limit=limit + 1, after_id=after[0] if after else None
        )
        page, token = paged(request, rows, limit, lambda row: (row[0].id,))
        return pb.ListApplicationsResponse(
            applications=[application_message(app, keys) for app, keys in page],
            next_page_token=token,
        )

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        publishable = request.kind == pb.API_KEY_KIND_PUBLISHABLE
        origins = list(dict.fromkeys(request.allowed_origins))  # in order, once each
        violations = Violations()
        if publishable:
            violations.check(
                bool(origins),
                "allowed_origins",
                "a publishable key needs at least one origin to be used from",
            )
        else:
            violations.check(
                not origins, "allowed_origins", "only a publishable key has allowed origins"
            )
        violations.raise_if_any()
        full_key, key_id, secret_hash = new_api_key()
        key = await self._db.run(
            applications.add_api_key,
            request.application_id,
            key_id,
            secret_hash,
            kind="publishable" if publishable else "secret",
            origins=origins,
        )
        return pb.CreateApiKeyResponse(key=api_key_message(key), api_key=full_key)

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.ApiKey:
        key = await self._db.run(applications.revoke_api_key, request.key_id.strip())
        self._authenticator.forget_key(key.id)
        return api_key_message(key)

    async def _tokens(
        self, account: accounts.Account, forgiven: accounts.Forgiveness | None
    ) -> pb.TokenPair:
        """The first pair of a new login: its refresh token starts a family. The attempt that
        logged in is forgiven in the same transaction."""
        now = utcnow()
        access = self._issuer.access(account.id, account.role, now)
        refresh, claims = self._issuer.refresh(account.id, uuid.uuid4().hex, now)
        await self._db.run(
            accounts.record_refresh_token,
            claims.jti,
            account.id,
            claims.family,
            refresh.expire_time,
            forgiven,
        )
        return _token_pair(access, refresh)


def _token_pair(access: Issued, refresh: Issued) -> pb.TokenPair:
    return pb.TokenPair(
        access_token=access.token,
        access_token_expire_time=to_timestamp(access.expire_time),
        refresh_token=refresh.token,
        refresh_token_expire_time=to_timestamp(refresh.expire_time),
    )


def normalized_email(email: str) -> str:
    """email as accounts store it: a valid address, lower-cased; otherwise EmailNotValidError
    (a ValueError) saying what is wrong. `quartet server create-admin` checks its email so too."""
    return validate_email(email.strip(), check_deliverability=False).normalized.lower()


def _valid_email(email: str, violations: Violations) -> str:
    try:
        return normalized_email(email)
    except EmailNotValidError as error:
        violations.add("email", str(error))
        return ""


def account_message(account: accounts.Account) -> pb.Account:
    message = pb.Account(
        id=account.id,
        email=account.email,
        role=ROLES.get(account.role, pb.ROLE_UNSPECIFIED),
        create_time=to_timestamp(account.create_time),
    )
    if account.disable_time is not None:
        message.disable_time.CopyFrom(to_timestamp(account.disable_time))
    return message


def api_key_message(key: applications.ApiKey) -> pb.ApiKey:
    message = pb.ApiKey(
        id=key.id,
        application_id=key.application_id,
        create_time=to_timestamp(key.create_time),
        kind=pb.API_KEY_KIND_PUBLISHABLE if key.kind == "publishable" else pb.API_KEY_KIND_SECRET,
        allowed_origins=key.origins,
    )
    if key.revoke_time is not None:
        message.revoke_time.CopyFrom(to_timestamp(key.revoke_time))
    return message


def application_message(
    application: applications.Application, keys: list[applications.ApiKey]
) -> pb.Application:
    return pb.Application(
        id=application.id,
        name=application.name,
        create_time=to_timestamp(application.create_time),
        api_keys=[api_key_message(k) for k in keys],
    )
