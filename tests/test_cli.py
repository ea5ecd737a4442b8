"""The `quartet` command, run as a user would (a subprocess against a real server, on each
database): every group's table and --json, the filters, the token file, and the exit statuses."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from quartet.client import Client, event
from quartet.events.v1.event_service_pb2 import Event
from quartet.server.settings import Settings
from quartet.server.testing import running_server
from tests.conftest import Principal, mint_token
from tests.helpers import OWN_CONNECTION, QUARTET, server_process, serving_pids

PASSWORD = "correct horse battery"
SESSION = "e2085be5-9137-4e4e-80b5-f1ffddc25423"
Run = Callable[..., subprocess.CompletedProcess[str]]


def run_quartet(
    *args: str, env: dict[str, str], input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QUARTET, *args],
        env={**outside(), **env},
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def outside() -> dict[str, str]:
    """The environment without quartet's variables (the tests' own among them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("QUARTET_")}


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """A user's own config and data directories."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_DATA_HOME": str(tmp_path / "data")}


@pytest.fixture
def as_admin(target: str, admin: Principal, home: dict[str, str]) -> Run:
    """quartet(...) as the admin, with --token."""
    env = {**home, "QUARTET_SERVER": target, "QUARTET_TOKEN": mint_token(admin.id, "admin")}

    def run(*args: str, input: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        return run_quartet(*args, env={**env, **extra}, input=input)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def table(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    """The rows of a printed table, cells split on runs of two spaces or more."""
    rows = []
    for line in ok(result).stdout.splitlines()[2:]:  # after the header and its rule
        rows.append([c.strip() for c in line.strip().split("  ") if c.strip()])
    return rows


def fields(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The name/value lines of one resource printed as a table."""
    pairs = (line.strip().split(None, 1) for line in ok(result).stdout.splitlines() if line.strip())
    return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}


def refused(result: subprocess.CompletedProcess[str], status: int, first_line: str) -> list[str]:
    assert result.returncode == status, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == first_line
    return lines


# --- login, the token file, refresh ----------------------------------------------------------


def test_login_keeps_private_tokens_that_are_refreshed_and_forgotten(
    settings: Settings, home: dict[str, str]
) -> None:
    short = dataclasses.replace(settings, access_token_minutes=1 / 60)  # one second
    with running_server(short) as target, Client(target) as anonymous:
        anonymous.auth.create_account("peter@example.com", PASSWORD)
        env = {**home, "QUARTET_SERVER": target}
        logged = ok(
            run_quartet(
                "login",
                "-e",
                "peter@example.com",
                "--password-stdin",
                env=env,
                input=PASSWORD + "\n",
            )
        )
        assert logged.stdout == f"logged in to {target} as peter@example.com (user)\n"
        token_file = Path(home["XDG_CONFIG_HOME"]) / "quartet" / "credentials.json"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert token_file.parent.stat().st_mode & 0o777 == 0o700
        first = json.loads(token_file.read_text())["servers"][target]["refresh_token"]
        time.sleep(1.5)  # the access token has expired: the command refreshes it, and keeps it
        me = fields(run_quartet("whoami", env=env))
        assert (me["server"], me["email"], me["role"]) == (target, "peter@example.com", "user")
        kept = json.loads(token_file.read_text())["servers"][target]["refresh_token"]
        assert kept != first
        assert token_file.stat().st_mode & 0o777 == 0o600
        # Without QUARTET_SERVER, the server logged in to last; --json for scripts.
        mine = json.loads(ok(run_quartet("whoami", "--json", env=home)).stdout)
        assert mine["server"] == target and mine["account"]["email"] == "peter@example.com"
        assert ok(run_quartet("logout", env=env)).stdout == f"logged out of {target}\n"
        lines = refused(
            run_quartet("whoami", env=env), 3, "error: UNAUTHENTICATED (CREDENTIALS_MISSING)"
        )
        assert lines[-1] == f"  log in with `quartet login --server {target}`, or give --token"
        wrong = run_quartet(
            "login", "-e", "peter@example.com", env={**env, "QUARTET_PASSWORD": "nope" * 3}
        )
        refused(wrong, 3, "error: UNAUTHENTICATED (LOGIN_FAILED)")
        no_password = run_quartet("login", "-e", "peter@example.com", env=env, input="")
        assert no_password.returncode == 2 and "--password-stdin" in no_password.stderr


# --- scores ------------------------------------------------------------------------------------


def test_scores_create_get_and_list_with_the_admin_filters(
    as_admin: Run, sign_in: Callable[..., Principal]
) -> None:
    user = sign_in("user", "someone@example.org")
    created = fields(as_admin("scores", "create", "41"))
    assert (created["input"], created["score"]) == ("41", "42")
    as_admin("scores", "create", "500", "--user", str(user.id))
    high = json.loads(ok(as_admin("scores", "create", "2000", "--json")).stdout)
    assert high["value"] == 2001.0 and set(high) == {
        "id",
        "user_id",
        "input_value",
        "value",
        "create_time",
    }
    got = json.loads(ok(as_admin("scores", "get", high["id"], "--json")).stdout)
    assert got == high
    everything = table(as_admin("scores", "list"))
    assert [row[3] for row in everything] == ["2001", "501", "42"]  # newest first
    assert [r[3] for r in table(as_admin("scores", "list", "--greater-than", "100"))] == [
        "2001",
        "501",
    ]
    assert [r[3] for r in table(as_admin("scores", "list", "--greater-than", "1000"))] == ["2001"]
    assert [r[3] for r in table(as_admin("scores", "list", "--user", str(user.id)))] == ["501"]
    assert [r[3] for r in table(as_admin("scores", "list", "--search", "someone@"))] == ["501"]
    assert len(table(as_admin("scores", "list", "--today"))) == 3
    assert len(table(as_admin("scores", "list", "--last-7-days"))) == 3
    tomorrow = as_admin("scores", "list", "--since", "2999-01-01")
    assert ok(tomorrow).stdout == "" and tomorrow.stderr == "(none)\n"
    assert table(as_admin("scores", "list", "--until", "2000-01-01T00:00:00+00:00")) == []
    rows = list(csv.reader(io.StringIO(ok(as_admin("scores", "list", "--format", "csv")).stdout)))
    assert rows[0] == ["id", "user", "input", "score", "created"]
    assert [r[3] for r in rows[1:]] == ["2001", "501", "42"]
    listed = json.loads(ok(as_admin("scores", "list", "--json", "--greater-than", "100")).stdout)
    assert [s["value"] for s in listed] == [2001.0, 501.0]
    first = as_admin("scores", "list", "--limit", "2")
    assert len(table(first)) == 2 and "--limit 0" in first.stderr
    both = as_admin("scores", "list", "--today", "--last-7-days")
    assert both.returncode == 2 and "only one of" in both.stderr
    bad_time = as_admin("scores", "list", "--since", "last tuesday")
    assert bad_time.returncode == 2 and "ISO 8601" in bad_time.stderr
    lines = refused(as_admin("scores", "get", "999"), 3, "error: NOT_FOUND (RESOURCE_NOT_FOUND)")
    assert "999" in lines[1]
    invalid = refused(
        as_admin("scores", "create", "nan"), 3, "error: INVALID_ARGUMENT (FIELD_INVALID)"
    )
    assert invalid[2].startswith("  input_value: ")


# --- events ------------------------------------------------------------------------------------


def pageview(**changes: object) -> dict[str, object]:
    line: dict[str, object] = {
        "session_id": SESSION,
        "category": "page interaction",
        "name": "pageview",
        "data": {"host": "www.ca.com", "path": "/"},
        "timestamp": "2021-01-01 09:15:27.243860",
    }
    line.update(changes)
    return line


def test_events_send_list_get_rejected_and_types(as_admin: Run, tmp_path: Path) -> None:
    app = json.loads(ok(as_admin("applications", "create", "checkout-web", "--json")).stdout)
    key = app["api_key"]
    other = str(uuid.uuid4())
    lines = [
        pageview(id="0190b2a0-0000-7000-8000-000000000001"),
        pageview(
            session_id=other, name="cta click", data={"host": "h", "path": "/", "element": "b"}
        ),
        pageview(timestamp="2999-01-01 00:00:00"),  # in the future: rejected
        pageview(category="unknown"),  # no such type: rejected
    ]
    file = tmp_path / "events.jsonl"
    file.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    sent = as_admin("events", "send", str(file), "--batch-size", "3", QUARTET_TOKEN=key)
    assert sent.returncode == 3, sent.stderr
    printed = sent.stdout.splitlines()
    assert printed[0] == "stored 2, duplicate 0, rejected 2"
    assert printed[1].startswith("  line 3 (") and printed[1].endswith("(EVENT_TIME_IN_FUTURE)")
    assert printed[2].startswith("  line 4 (") and printed[2].endswith("(EVENT_TYPE_UNKNOWN)")
    assert sent.stderr == ""  # no progress bar where no one watches
    again = as_admin("events", "send", "--json", input=json.dumps(lines[0]), QUARTET_TOKEN=key)
    assert json.loads(ok(again).stdout) == {
        "stored": 0,
        "duplicate": 1,
        "rejected": 0,
        "rejections": [],
    }
    broken = as_admin("events", "send", input='{"session_id": 1}\nnot json\n', QUARTET_TOKEN=key)
    assert broken.returncode == 2 and "line 1: " in broken.stderr

    listed = table(as_admin("events", "list"))
    assert [(r[3], r[4]) for r in listed] == [
        ("page interaction", "pageview"),
        ("page interaction", "cta click"),
    ]
    assert table(as_admin("events", "list", "--session", other))[0][4] == "cta click"
    named = table(
        as_admin("events", "list", "--category", "page interaction", "--name", "pageview")
    )
    assert [r[0] for r in named] == ["0190b2a0-0000-7000-8000-000000000001"]
    assert len(table(as_admin("events", "list", "--application", app["application"]["id"]))) == 2
    assert table(as_admin("events", "list", "--application", "999")) == []
    assert table(as_admin("events", "list", "--since", "2021-01-02")) == []
    assert len(table(as_admin("events", "list", "--until", "2021-01-02T00:00:00Z"))) == 2
    newest = json.loads(ok(as_admin("events", "list", "--json", "--newest-first")).stdout)
    assert [e["name"] for e in newest] == ["cta click", "pageview"]
    assert newest[0]["data"] == {"host": "h", "path": "/", "element": "b"}
    rows = list(
        csv.DictReader(io.StringIO(ok(as_admin("events", "list", "--format", "csv")).stdout))
    )
    assert json.loads(rows[0]["data"]) == {"host": "www.ca.com", "path": "/"}

    one = fields(as_admin("events", "get", "0190b2a0-0000-7000-8000-000000000001"))
    assert (one["session"], one["occurred"]) == (SESSION, "2021-01-01T09:15:27Z")
    assert json.loads(ok(as_admin("events", "get", newest[0]["id"], "--json")).stdout) == newest[0]

    kept = table(as_admin("events", "rejected"))
    assert [r[-1] for r in kept] == ["name: EVENT_TYPE_UNKNOWN", "occur_time: EVENT_TIME_IN_FUTURE"]
    future = json.loads(
        ok(as_admin("events", "rejected", "--reason", "EVENT_TIME_IN_FUTURE", "--json")).stdout
    )
    assert [r["violations"][0]["reason"] for r in future] == ["EVENT_TIME_IN_FUTURE"]

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["sku"]}))
    made = fields(as_admin("events", "types", "create", "shop", "purchase", str(schema)))
    assert (made["category"], made["name"], made["version"]) == ("shop", "purchase", "1")
    types = list(
        csv.reader(io.StringIO(ok(as_admin("events", "types", "list", "--format", "csv")).stdout))
    )
    assert ["shop", "purchase", "1"] == types[-1][:3]
    schema.write_text("[1]")
    not_schema = as_admin("events", "types", "create", "shop", "purchase", str(schema))
    assert not_schema.returncode == 2 and "JSON Schema" in not_schema.stderr
    no_filter = as_admin("events", "tail")
    assert no_filter.returncode == 2 and "--session or --category" in no_filter.stderr


def test_count_export_and_replay(as_admin: Run, client: Client, tmp_path: Path) -> None:
    key = client.auth.create_application("cli").api_key
    lines = [pageview(), pageview(name="cta click", data={"host": "h", "path": "/"})]
    lines += [pageview(category="video", name="play", data={"video_id": "v"})]
    sent = as_admin(
        "events", "send", input="\n".join(json.dumps(x) for x in lines), QUARTET_TOKEN=key
    )
    assert sent.returncode == 3  # a click without its element, and an unknown type: rejected

    counted = table(as_admin("events", "count", "--by", "day", "--since", "2021-01-01T00:00Z",
                             "--until", "2021-01-02T00:00Z"))  # fmt: skip
    assert counted == [["2021-01-01T00:00:00Z", "page interaction", "pageview", "1"]]
    no_range = as_admin("events", "count")
    assert no_range.returncode == 2 and "--since and --until" in no_range.stderr

    schema = tmp_path / "video.json"
    schema.write_text(json.dumps({"type": "object"}))
    ok(as_admin("events", "types", "create", "video", "play", str(schema)))
    replayed = ok(as_admin("events", "replay", "--category", "video"))
    assert replayed.stdout == "stored 1, still rejected 0, already stored 0\n"
    again = json.loads(ok(as_admin("events", "replay", "--json")).stdout)
    assert again == {"stored_count": "0", "still_rejected_count": "1", "already_stored_count": "1"}
    still = table(as_admin("events", "rejected", "--replay", "still rejected"))
    assert [(r[5], r[-1]) for r in still] == [("cta click", "still rejected")]

    printed = ok(as_admin("events", "export")).stdout.splitlines()
    assert [json.loads(line)["name"] for line in printed] == ["pageview", "play"]
    path = tmp_path / "out.ndjson"
    written = ok(as_admin("events", "export", str(path), "--category", "video"))
    assert written.stderr == f"exported 1 events to {path}\n"
    assert json.loads(path.read_text())["data"] == {"video_id": "v"}


def test_tail_prints_events_sent_after_it_started(
    target: str, admin: Principal, as_admin: Run, home: dict[str, str], client: Client
) -> None:
    key = client.auth.create_application("tailed").api_key
    env = {
        **outside(),
        **home,
        "QUARTET_SERVER": target,
        "QUARTET_TOKEN": mint_token(admin.id, "admin"),
    }
    before = event(
        session_id=SESSION,
        category="page interaction",
        name="pageview",
        data={"host": "h", "path": "/"},
        occurred_at="2021-01-01 09:15:27",
    )
    sent: list[str] = []
    printed: list[str] = []
    with Client(target, token=key) as sender:
        sender.events.send(before)  # stored before the tail starts: not one it prints
        process = subprocess.Popen(
            [*QUARTET, "events", "tail", "--session", SESSION, "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None and process.stderr is not None
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_put_lines, args=(process.stdout, lines), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 60
            while len(printed) < 3 and time.monotonic() < deadline:
                if not printed:  # it starts following at a moment no one sees: send till it shows
                    batch = [
                        event(
                            session_id=SESSION,
                            category="page interaction",
                            name="pageview",
                            data={"host": "h", "path": f"/{len(sent) + n}"},
                            occurred_at="2021-01-01 09:15:28",
                        )
                        for n in range(3)
                    ]
                    sender.events.send_batch(batch)
                    sent += [e.id for e in batch]
                with contextlib.suppress(queue.Empty):
                    printed.append(json.loads(lines.get(timeout=1))["id"])
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
            reader.join(timeout=10)  # it has read to the end of the output
            stderr = process.stderr.read()
            process.stdout.close()
            process.stderr.close()
    assert len(printed) == 3 and before.id not in printed
    first = sent.index(printed[0])
    assert printed == sent[first : first + 3]  # everything stored after it started, in order
    assert process.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr


def _put_lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


# --- accounts, applications, keys -------------------------------------------------------------


def test_accounts_applications_and_keys(as_admin: Run) -> None:
    made = fields(
        as_admin(
            "accounts",
            "create",
            "ana@example.com",
            "--role",
            "analyst",
            "--password-stdin",
            input=PASSWORD + "\n",
        )
    )
    assert (made["email"], made["role"]) == ("ana@example.com", "analyst")
    accounts = table(as_admin("accounts", "list"))
    assert [(r[1], r[2]) for r in accounts] == [
        ("admin@example.net", "admin"),
        ("ana@example.com", "analyst"),
    ]
    promoted = json.loads(
        ok(as_admin("accounts", "set-role", made["id"], "admin", "--json")).stdout
    )
    assert promoted["role"] == "ROLE_ADMIN" and promoted["email"] == "ana@example.com"
    bad_role = as_admin("accounts", "set-role", made["id"], "root")
    assert bad_role.returncode == 2 and "root" in bad_role.stderr
    taken = as_admin(
        "accounts", "create", "ana@example.com", input=PASSWORD, QUARTET_PASSWORD=PASSWORD
    )
    refused(taken, 3, "error: ALREADY_EXISTS (RESOURCE_ALREADY_EXISTS)")

    app = fields(as_admin("applications", "create", "mobile"))
    assert app["name"] == "mobile" and app["api"].split()[-1].startswith("qk_")
    key = json.loads(ok(as_admin("keys", "create", app["id"], "--json")).stdout)
    assert key["api_key"].startswith("qk_") and key["key"]["application_id"] == app["id"]
    listed = table(as_admin("applications", "list"))
    assert listed[0][1] == "mobile" and key["key"]["id"] in listed[0][3]
    revoked = fields(as_admin("keys", "revoke", key["key"]["id"]))
    assert revoked["revoked"].endswith("Z")
    apps = json.loads(ok(as_admin("applications", "list", "--json")).stdout)
    assert [k.get("revoke_time", "") != "" for k in apps[0]["api_keys"]] == [False, True]
    with_revoked = as_admin(
        "events", "send", input=json.dumps(pageview()), QUARTET_TOKEN=key["api_key"]
    )
    refused(with_revoked, 3, "error: UNAUTHENTICATED (CREDENTIALS_REVOKED)")


# --- regions -----------------------------------------------------------------------------------


def test_regions_provinces_health_regions_and_lookups(as_admin: Run) -> None:
    atlantic = table(as_admin("regions", "provinces", "--region", "1"))
    assert [r[1] for r in atlantic] == ["NL", "PE", "NS", "NB"]
    provinces = json.loads(ok(as_admin("regions", "provinces", "--json")).stdout)
    assert len(provinces) == 13 and provinces[0]["alpha_code"] == "NL"
    island = table(as_admin("regions", "health-regions", "--province", "PE"))
    assert [r[:3] for r in island] == [["1100", "11", "Prince Edward Island"]]
    ontario = as_admin(
        "regions", "health-regions", "--province", "35", "--format", "csv", "-n", "0"
    )
    assert len(ok(ontario).stdout.splitlines()) == 1 + 34
    found = as_admin("regions", "lookup", "K1A", "k1a 0b1", "--json")
    assert [r["fsa"]["code"] for r in json.loads(ok(found).stdout)] == ["K1A", "K1A"]
    mixed = as_admin("regions", "lookup", "M5V", "ZZZ")
    assert mixed.returncode == 3
    rows = [line.split() for line in mixed.stdout.splitlines()[2:]]
    assert rows[0][:2] == ["M5V", "M5V"] and rows[1][:2] == ["ZZZ", "FSA_INVALID:"]


# --- failures and the command itself ------------------------------------------------------------


def test_failures_exit_with_distinct_statuses_and_no_traceback(home: dict[str, str]) -> None:
    nowhere = {**home, "QUARTET_SERVER": "127.0.0.1:1", "QUARTET_TOKEN": "x"}
    down = run_quartet("scores", "list", "--timeout", "2", env=nowhere)
    lines = refused(down, 4, "error: UNAVAILABLE")
    assert lines[-1] == "  is a quartet server running at 127.0.0.1:1? (--server, QUARTET_SERVER)"
    usage = run_quartet("scores", "list", "--greater-than", "lots", env=nowhere)
    assert usage.returncode == 2 and "'lots' is not a valid float" in usage.stderr
    unknown = run_quartet("scorez", env=home)
    assert unknown.returncode == 2 and "No such command" in unknown.stderr
    missing = run_quartet("events", "send", "/no/such/file", env=nowhere)
    assert missing.returncode == 2 and "/no/such/file" in missing.stderr


def test_completion_scripts_and_completions(home: dict[str, str]) -> None:
    for shell in ("bash", "zsh", "fish"):
        script = ok(run_quartet("completion", shell, env=home)).stdout
        assert "_QUARTET_COMPLETE" in script
    env = {
        **home,
        "_QUARTET_COMPLETE": "bash_complete",
        "COMP_WORDS": "quartet ev",
        "COMP_CWORD": "1",
    }
    assert ok(run_quartet(env=env)).stdout.splitlines() == ["plain,events"]
    env.update(COMP_WORDS="quartet events ty", COMP_CWORD="2")
    assert ok(run_quartet(env=env)).stdout.splitlines() == ["plain,types"]


def test_server_commands_print_only_what_people_need(tmp_path: Path, home: dict[str, str]) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    env = {**home, "QUARTET_ADMIN_PASSWORD": PASSWORD}
    made = ok(
        run_quartet("server", "create-admin", "ops@example.com", "--database-url", url, env=env)
    )
    assert made.stdout == "created: ops@example.com (account 1); log in with `quartet login`\n"
    assert made.stderr == ""  # no migration log
    verbose = ok(run_quartet("server", "migrate", "--database-url", url, "--verbose", env=env))
    assert verbose.stdout == "the database is up to date\n"
    quiet = ok(run_quartet("server", "migrate", "--database-url", url, env=env))
    assert quiet.stderr == ""
    alias = subprocess.run(
        [str(Path(QUARTET[0]).with_name("quartet-server")), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "create-admin" in alias.stdout and "Usage: quartet-server" in alias.stdout


def test_tail_receives_what_any_worker_stores(tmp_path: Path, home: dict[str, str]) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    env = {**outside(), **home, "DATABASE_URL": url, "QUARTET_ADMIN_PASSWORD": PASSWORD}
    ok(run_quartet("server", "create-admin", "ops@example.com", env=env))
    with server_process("--workers", "2", env=env) as server:
        env["QUARTET_SERVER"] = server.address
        ok(run_quartet("login", "-e", "ops@example.com", env={**env, "QUARTET_PASSWORD": PASSWORD}))
        key = json.loads(ok(run_quartet("applications", "create", "web", "--json", env=env)).stdout)
        process = subprocess.Popen(
            [*QUARTET, "events", "tail", "--category", "page interaction", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(2)  # the command has started following
            sent: list[Event] = []
            pids: set[int] = set()
            # Each on a connection of its own, which the kernel gives either worker at random:
            # sent until both have stored some (ten were all given one worker once in CI).
            while len(pids) < 2 and len(sent) < 60:
                with Client(server.address, token=key["api_key"], options=OWN_CONNECTION) as sender:
                    sent.append(
                        event(
                            session_id=SESSION,
                            category="page interaction",
                            name="pageview",
                            data={"host": "h", "path": f"/{len(sent)}"},
                            occurred_at="2021-01-01 09:15:27",
                        )
                    )
                    sender.events.send(sent[-1])
                time.sleep(0.05)  # each worker writes its access log every 20 ms
                pids = serving_pids(server.log, "SendEvent")
            assert process.stdout is not None
            printed = [json.loads(process.stdout.readline())["id"] for _ in sent]
        finally:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=30)
    assert printed == [e.id for e in sent]
    assert len(pids) == 2  # both workers stored some
