"""client.auth: accounts, tokens, applications and API keys."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from google.protobuf.descriptor import ServiceDescriptor

from quartet.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from quartet.client._base import Transport, pages

pb = auth_service_pb2
Role = pb.Role


class Auth:
    """The AuthService, through `Client.auth`. See also `Client.login`."""

    # The service it calls (tests/test_registration.py: a Client attribute for every service).
    SERVICE: ClassVar[ServiceDescriptor] = auth_service_pb2.DESCRIPTOR.services_by_name[
        "AuthService"
    ]

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._stub = auth_service_pb2_grpc.AuthServiceStub(transport.channel)

    def create_account(
        self,
        email: str,
        password: str,
        *,
        role: pb.Role.ValueType = pb.ROLE_UNSPECIFIED,
        timeout: float | None = None,
    ) -> pb.CreateAccountResponse:
        """Create an account (a user, unless an admin's client asks for another role)."""
        request = pb.CreateAccountRequest(email=email, password=password, role=role)
        return self._transport.invoke(self._stub.CreateAccount, request, timeout)

    def login(self, email: str, password: str, *, timeout: float | None = None) -> pb.TokenPair:
        """Tokens for an account. `Client.login` also makes the client use them."""
        request = pb.LoginRequest(email=email, password=password)
        return self._transport.invoke(self._stub.Login, request, timeout)

    def refresh(self, refresh_token: str, *, timeout: float | None = None) -> pb.TokenPair:
        """A new pair for a refresh token, which is then used up."""
        request = pb.RefreshTokenRequest(refresh_token=refresh_token)
        return self._transport.invoke(self._stub.RefreshToken, request, timeout)

    def current_account(self, *, timeout: float | None = None) -> pb.Account:
        """The account whose token this client sends."""
        request = pb.GetCurrentAccountRequest()
        return self._transport.invoke(self._stub.GetCurrentAccount, request, timeout)

    def list_accounts(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> pb.ListAccountsResponse:
        request = pb.ListAccountsRequest(page_size=page_size, page_token=page_token)
        return self._transport.invoke(self._stub.ListAccounts, request, timeout)

    def iter_accounts(self, *, page_size: int = 0) -> Iterator[pb.Account]:
        return pages(
            lambda token: self.list_accounts(page_size=page_size, page_token=token),
            lambda page: page.accounts,
        )

    def set_role(
        self, account_id: int, role: pb.Role.ValueType, *, timeout: float | None = None
    ) -> pb.Account:
        request = pb.SetAccountRoleRequest(account_id=account_id, role=role)
        return self._transport.invoke(self._stub.SetAccountRole, request, timeout)

    def disable_account(self, account_id: int, *, timeout: float | None = None) -> pb.Account:
        """Disable an account (admins): its tokens and logins are refused until enabled."""
        request = pb.DisableAccountRequest(account_id=account_id)
        return self._transport.invoke(self._stub.DisableAccount, request, timeout)

    def enable_account(self, account_id: int, *, timeout: float | None = None) -> pb.Account:
        """Enable a disabled account again (admins)."""
        request = pb.EnableAccountRequest(account_id=account_id)
        return self._transport.invoke(self._stub.EnableAccount, request, timeout)

    def create_application(
        self, name: str, *, timeout: float | None = None
    ) -> pb.CreateApplicationResponse:
        """Register an application; the response's api_key is shown only this once."""
        request = pb.CreateApplicationRequest(name=name)
        return self._transport.invoke(self._stub.CreateApplication, request, timeout)

    def list_applications(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> pb.ListApplicationsResponse:
        request = pb.ListApplicationsRequest(page_size=page_size, page_token=page_token)
        return self._transport.invoke(self._stub.ListApplications, request, timeout)

    def iter_applications(self, *, page_size: int = 0) -> Iterator[pb.Application]:
        return pages(
            lambda token: self.list_applications(page_size=page_size, page_token=token),
            lambda page: page.applications,
        )

    def create_api_key(
        self, application_id: int, *, timeout: float | None = None
    ) -> pb.CreateApiKeyResponse:
        """Another key for an application (to rotate keys); shown only this once."""
        request = pb.CreateApiKeyRequest(application_id=application_id)
        return self._transport.invoke(self._stub.CreateApiKey, request, timeout)

    def revoke_api_key(self, key_id: str, *, timeout: float | None = None) -> pb.ApiKey:
        request = pb.RevokeApiKeyRequest(key_id=key_id)
        return self._transport.invoke(self._stub.RevokeApiKey, request, timeout)
