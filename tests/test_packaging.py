"""The import layout: one `quartet` namespace, and an SDK that needs no server dependencies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import quartet

REPO = Path(__file__).resolve().parent.parent


def test_quartet_is_a_namespace_over_three_roots() -> None:
    assert quartet.__file__ is None  # no quartet/__init__.py anywhere would mask the others
    roots = {Path(p).parent.name for p in quartet.__path__}
    assert roots == {"client", "server", "storage"}


def test_no_generic_top_level_names_are_importable_outside_the_checkout(tmp_path: Path) -> None:
    names = "('server', 'client', 'storage')"
    probe = f"import importlib.util as u; print([n for n in {names} if u.find_spec(n)])"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_sdk_imports_without_server_dependencies(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        for blocked in ("peewee", "playhouse", "psycopg2", "grpc_reflection"):
            sys.modules[blocked] = None  # any import of these now fails
        from quartet.client import Client, QuartetError
        import quartet.score.v1.score_service_pb2_grpc
        with Client("127.0.0.1:1") as client:
            assert client.scores is not None
        assert "quartet.server" not in sys.modules and "quartet.storage" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_public_sdk_surface() -> None:
    import quartet.client
    import quartet.client.aio

    assert quartet.client.__all__ == [
        "BufferedSender",
        "Client",
        "EventTail",
        "EventsNotSent",
        "FieldViolation",
        "QuartetError",
        "event",
    ]
    assert quartet.client.aio.__all__ == [
        "AsyncEventTail",
        "Client",
        "FieldViolation",
        "QuartetError",
        "event",
    ]


def test_no_proto_package_shadows_a_hand_written_one() -> None:
    proto_domains = {p.name for p in (REPO / "protos" / "quartet").iterdir()}
    assert not proto_domains & {"client", "cli", "server", "storage", "testing"}
