"""Each service registers itself once, in its domain package (quartet.server.services lists them);
what the server offers, the migration model list, the SDK and the import contracts follow the
protos, so that a new service cannot be half added."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from quartet import storage
from quartet.client import Client, contract
from quartet.server.services import MODELS, SERVICES
from quartet.storage.base import BaseModel

ROOT = Path(__file__).resolve().parent.parent


def test_the_registered_services_are_those_of_the_protos() -> None:
    registered = {service.name: service.descriptor for service in SERVICES}
    assert len(registered) == len(SERVICES), "a service is registered twice"
    assert registered == {service.full_name: service for service in contract.services()}


def _storage_models() -> Iterator[type[BaseModel]]:
    """Every model the storage layer defines, found by importing each of its modules."""
    for module in pkgutil.walk_packages(storage.__path__, "quartet.storage."):
        imported = importlib.import_module(module.name)
        for _, value in inspect.getmembers(imported, inspect.isclass):
            if issubclass(value, BaseModel) and value is not BaseModel:
                yield value


def test_every_storage_model_belongs_to_one_registered_service() -> None:
    owned = [model for service in SERVICES for model in service.models]
    assert len(owned) == len(set(owned)), "a model is registered by two services"
    assert set(_storage_models()) == set(owned) == set(MODELS)
    # Dependency order: a table comes after every table it references (the test cleanup's order).
    for position, model in enumerate(MODELS):
        for field in model._meta.refs:
            assert MODELS.index(field.rel_model) < position, (model, field.rel_model)


def test_the_sdk_has_an_attribute_per_service() -> None:
    # No call is made: a channel connects only when first used.
    with Client("127.0.0.1:1") as client:
        attributes = {
            name: type(value).SERVICE.full_name
            for name, value in vars(client).items()
            if not name.startswith("_") and hasattr(type(value), "SERVICE")
        }
    quartet_services = {service.full_name for service in contract.services()}
    assert set(attributes.values()) == quartet_services | {"grpc.health.v1.Health"}
    assert len(attributes) == len(set(attributes.values())), attributes


def _call_empty(channel: grpc.Channel, method: Any) -> grpc.StatusCode:
    """Call the method with empty messages and no credentials; the status code it ends with."""
    path = contract.path(method)
    kind = (
        ("unary" if not method.client_streaming else "stream")
        + "_"
        + ("unary" if not method.server_streaming else "stream")
    )
    callable_ = getattr(channel, kind)(path)
    request: Any = b"" if not method.client_streaming else iter([b""])
    try:
        reply = callable_(request, timeout=30)
        if method.server_streaming:
            list(reply)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_the_server_offers_every_method_of_the_protos(anonymous: Client) -> None:
    """The app added every servicer: no method answers UNIMPLEMENTED, as one of a service left
    unregistered would (the interceptor sees only methods that have a handler)."""
    codes = {
        contract.path(method): _call_empty(anonymous.channel, method)
        for method in contract.methods()
    }
    assert {path for path, code in codes.items() if code == grpc.StatusCode.UNIMPLEMENTED} == set()


def _sdk_contract() -> dict[str, Any]:
    """The import-linter contract that keeps server and storage out of the SDK."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (found,) = [
        contract_
        for contract_ in config["tool"]["importlinter"]["contracts"]
        if "quartet.client" in contract_.get("source_modules", [])
    ]
    assert "quartet.server" in found["forbidden_modules"]
    return found  # type: ignore[no-any-return]


def uncovered(source_modules: list[str]) -> set[str]:
    """The packages of the SDK's wheel root (the SDK and every generated `quartet.<domain>`,
    found on disk) that the contract does not cover. The `quartet` command (quartet.cli) shares
    the root but is not the SDK: the cli extra installs its libraries, and it runs the server's
    commands (contract "The command reaches the database only through the server's commands")."""
    packages = {
        f"quartet.{package.name}"
        for package in (ROOT / "client" / "quartet").iterdir()
        if (package / "__init__.py").exists()
    }
    return packages - set(source_modules) - {"quartet.cli"}


def test_the_import_contract_covers_the_sdk_and_every_generated_package() -> None:
    sources = _sdk_contract()["source_modules"]
    assert uncovered(sources) == set()
    # The check sees a package left out, such as a new service's generated one.
    assert uncovered([module for module in sources if module != "quartet.regions"]) == {
        "quartet.regions"
    }
