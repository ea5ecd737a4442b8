"""client.auth: accounts, tokens, applications and API keys."""

from __future__ import annotations

from collections.abc import Sequence

from quartet.auth.v1 import auth_service_pb2
from quartet.client import _aio_base, _base
from quartet.client._base import Call, call

pb = auth_service_pb2
Role = pb.Role
SERVICE = pb.DESCRIPTOR.services_by_name["AuthService"]


class AuthCalls:
    """The AuthService's calls, described once for both clients."""

    @staticmethod
    def create_account(
        email: str,
        password: str,
        *,
        role: pb.Role.ValueType = pb.ROLE_UNSPECIFIED,
        timeout: float | None = None,
    ) -> Call[pb.CreateAccountResponse]:
        """Create an account (a user, unless an admin's client asks for another role)."""
        request = pb.CreateAccountRequest(email=email, password=password, role=role)
        return call(SERVICE, "CreateAccount", request, pb.CreateAccountResponse, timeout)

    @staticmethod
    def login(email: str, password: str, *, timeout: float | None = None) -> Call[pb.TokenPair]:
        """Tokens for an account. The client's own `login` also makes it use them."""
        request = pb.LoginRequest(email=email, password=password)
        return call(SERVICE, "Login", request, pb.TokenPair, timeout)

    @staticmethod
    def refresh(refresh_token: str, *, timeout: float | None = None) -> Call[pb.TokenPair]:
        """A new pair for a refresh token, which is then used up."""
        request = pb.RefreshTokenRequest(refresh_token=refresh_token)
        return call(SERVICE, "RefreshToken", request, pb.TokenPair, timeout)

    @staticmethod
    def current_account(*, timeout: float | None = None) -> Call[pb.Account]:
        """The account whose token this client sends."""
        request = pb.GetCurrentAccountRequest()
        return call(SERVICE, "GetCurrentAccount", request, pb.Account, timeout)

    @staticmethod
    def list_accounts(
        *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Call[pb.ListAccountsResponse]:
        """One page of accounts (admins)."""
        request = pb.ListAccountsRequest(page_size=page_size, page_token=page_token)
        return call(SERVICE, "ListAccounts", request, pb.ListAccountsResponse, timeout)

    @staticmethod
    def set_role(
        account_id: int, role: pb.Role.ValueType, *, timeout: float | None = None
    ) -> Call[pb.Account]:
        """Give an account another role (admins)."""
        request = pb.SetAccountRoleRequest(account_id=account_id, role=role)
        return call(SERVICE, "SetAccountRole", request, pb.Account, timeout)

    @staticmethod
    def disable_account(account_id: int, *, timeout: float | None = None) -> Call[pb.Account]:
        """Disable an account (admins): its tokens and logins are refused until enabled."""
        request = pb.DisableAccountRequest(account_id=account_id)
        return call(SERVICE, "DisableAccount", request, pb.Account, timeout)

    @staticmethod
    def enable_account(account_id: int, *, timeout: float | None = None) -> Call[pb.Account]:
        """Enable a disabled account again (admins)."""
        request = pb.EnableAccountRequest(account_id=account_id)
        return call(SERVICE, "EnableAccount", request, pb.Account, timeout)

    @staticmethod
    def create_application(
        name: str, *, timeout: float | None = None
    ) -> Call[pb.CreateApplicationResponse]:
        """Register an application; the response's api_key is shown only this once."""
        request = pb.CreateApplicationRequest(name=name)
        return call(SERVICE, "CreateApplication", request, pb.CreateApplicationResponse, timeout)

    @staticmethod
    def list_applications(
        *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> Call[pb.ListApplicationsResponse]:
        """One page of applications."""
        request = pb.ListApplicationsRequest(page_size=page_size, page_token=page_token)
        return call(SERVICE, "ListApplications", request, pb.ListApplicationsResponse, timeout)

    @staticmethod
    def create_api_key(
        application_id: int,
        *,
        allowed_origins: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Call[pb.CreateApiKeyResponse]:
        """Another key for an application (to rotate keys); shown only this once.

        Args:
            application_id: The application the key acts for.
            allowed_origins: Given, the key is a publishable one, for web pages on these origins
                (e.g. "https://shop.example.com"): it may only send the application's events, over
                the HTTP port. See docs/http.md.
            timeout: Seconds before the call gives up.
        """
        request = pb.CreateApiKeyRequest(
            application_id=application_id,
            kind=pb.API_KEY_KIND_PUBLISHABLE if allowed_origins else pb.API_KEY_KIND_SECRET,
            allowed_origins=allowed_origins,
        )
        return call(SERVICE, "CreateApiKey", request, pb.CreateApiKeyResponse, timeout)

    @staticmethod
    def revoke_api_key(key_id: str, *, timeout: float | None = None) -> Call[pb.ApiKey]:
        """Revoke an API key: calls with it are refused from then on."""
        request = pb.RevokeApiKeyRequest(key_id=key_id)
        return call(SERVICE, "RevokeApiKey", request, pb.ApiKey, timeout)


def _accounts(page: pb.ListAccountsResponse) -> Sequence[pb.Account]:
    return page.accounts


def _applications(page: pb.ListApplicationsResponse) -> Sequence[pb.Application]:
    return page.applications


class Auth(_base.Service):
    """The AuthService, through `Client.auth`. See also `Client.login`."""

    SERVICE = SERVICE
    create_account = _base.unary(AuthCalls.create_account)
    login = _base.unary(AuthCalls.login)
    refresh = _base.unary(AuthCalls.refresh)
    current_account = _base.unary(AuthCalls.current_account)
    list_accounts = _base.unary(AuthCalls.list_accounts)
    iter_accounts = _base.paged(AuthCalls.list_accounts, _accounts)
    set_role = _base.unary(AuthCalls.set_role)
    disable_account = _base.unary(AuthCalls.disable_account)
    enable_account = _base.unary(AuthCalls.enable_account)
    create_application = _base.unary(AuthCalls.create_application)
    list_applications = _base.unary(AuthCalls.list_applications)
    iter_applications = _base.paged(AuthCalls.list_applications, _applications)
    create_api_key = _base.unary(AuthCalls.create_api_key)
    revoke_api_key = _base.unary(AuthCalls.revoke_api_key)


class AsyncAuth(_aio_base.AsyncService):
    """The AuthService, through `quartet.client.aio.Client.auth`: the methods of `Auth`, as
    coroutines (and async iterators for `iter_*`)."""

    SERVICE = SERVICE
    create_account = _aio_base.unary(AuthCalls.create_account)
    login = _aio_base.unary(AuthCalls.login)
    refresh = _aio_base.unary(AuthCalls.refresh)
    current_account = _aio_base.unary(AuthCalls.current_account)
    list_accounts = _aio_base.unary(AuthCalls.list_accounts)
    iter_accounts = _aio_base.paged(AuthCalls.list_accounts, _accounts)
    set_role = _aio_base.unary(AuthCalls.set_role)
    disable_account = _aio_base.unary(AuthCalls.disable_account)
    enable_account = _aio_base.unary(AuthCalls.enable_account)
    create_application = _aio_base.unary(AuthCalls.create_application)
    list_applications = _aio_base.unary(AuthCalls.list_applications)
    iter_applications = _aio_base.paged(AuthCalls.list_applications, _applications)
    create_api_key = _aio_base.unary(AuthCalls.create_api_key)
    revoke_api_key = _aio_base.unary(AuthCalls.revoke_api_key)
