"""The experiment import from the command line: `quartet server import-experiments` against the
database, and `quartet experiments import` over gRPC, each with its progress and its problems."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from quartet.client import Client
from quartet.server.auth.passwords import hash_password
from quartet.storage import accounts
from tests.conftest import Principal, mint_token
from tests.helpers import QUARTET, run_on_terminal
from tests.test_experiment_reports import SEED as SEED_FILES
from tests.test_experiment_reports import Expected

SEED = Path(__file__).resolve().parent.parent / "storage/quartet/storage/data/experiments"
SERVER = [sys.executable, "-m", "quartet.server", "import-experiments"]
CLIENT = [*QUARTET, "experiments"]
DONE = "done: 10 users, 3 compounds, 11 experiments"
FLAGS = [
    ("users", "users.csv"),
    ("compounds", "compounds.csv"),
    ("experiments", "user_experiments.csv"),
]


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def broken_copy(tmp_path: Path) -> Path:
    """The seed's files, with experiment 11 naming user 42 and a bad run time."""
    shutil.copytree(SEED, tmp_path / "data")
    experiments = tmp_path / "data" / "user_experiments.csv"
    experiments.write_bytes(
        experiments.read_bytes().replace(b"11,\t10,\t1;3,\t60", b"11,\t42,\t1;3,\tlong")
    )
    return tmp_path / "data"


def test_server_command_imports_the_demo_data_or_a_directory(
    client: Client, database_url: str, tmp_path: Path
) -> None:
    demo = run([*SERVER, "--database-url", database_url])
    assert demo.returncode == 0, demo.stderr
    assert demo.stderr.splitlines()[-1] == DONE
    assert client.experiments.get_report().average_experiments_per_user == 1.1
    shutil.copytree(SEED, tmp_path / "data")
    (tmp_path / "data" / "user_experiments.csv").write_bytes(b"")
    again = run([*SERVER, "--database-url", database_url, str(tmp_path / "data")])
    assert again.returncode == 0, again.stderr
    assert again.stderr.splitlines()[-1] == "done: 10 users, 3 compounds, 0 experiments"
    assert client.experiments.get_report().experiment_count == 0


def test_server_command_lists_the_problems_and_imports_nothing(
    client: Client, database_url: str, tmp_path: Path
) -> None:
    result = run([*SERVER, "--database-url", database_url, str(broken_copy(tmp_path))])
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == [
        "  user_experiments.csv:12:user_id: user 42 is not in users.csv",
        "  user_experiments.csv:12:experiment_run_time: 'long' is not a number of zero or more",
    ]
    assert client.experiments.get_report().experiment_count == 0
    missing = run([*SERVER, "--database-url", database_url, str(tmp_path / "nowhere")])
    assert missing.returncode == 1
    assert "No such file or directory" in missing.stderr


def test_client_command_imports_and_prints_the_report(
    target: str, admin: Principal, tmp_path: Path
) -> None:
    env = {"QUARTET_SERVER": target, "QUARTET_TOKEN": mint_token(admin.id, "admin")}
    imported = run([*CLIENT, "import", str(SEED)], env)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == DONE + "\n"
    assert imported.stderr == ""  # no progress where no one watches
    printed = run([*CLIENT, "report"], env)
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0].split() == ["experiments", "11"]
    assert lines[1].split() == ["users", "10", "(10", "ran", "one)"]
    assert lines[3].split() == ["per", "user", "1.1"]
    rows = [line.split() for line in lines if line.strip()[:1].isdigit()]
    assert rows[0] == ["1", "Alice", "alice@example.com", "2", "Compound", "B", "2", "25", "12.5"]
    assert rows[1] == ["2", "Bob", "bob@example.com", "1", "Compound", "A", "1", "20", "20"]
    one = run([*CLIENT, "report", "--user", "3", "--format", "csv"], env)
    assert one.stdout.splitlines() == [
        "user,name,email,experiments,favourite compound,uses,run time,average",
        "3,Carol,carol@example.com,1,Compound B,1,25,25",
    ]


def test_client_command_takes_files_and_logs_in(
    target: str, run_in_db: Any, tmp_path: Path
) -> None:
    run_in_db(accounts.create_account, "ops@example.com", hash_password("long enough"), "admin")
    env = {
        "QUARTET_SERVER": target,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "QUARTET_PASSWORD": "long enough",
    }
    logged_in = run([*QUARTET, "login", "--email", "ops@example.com"], env)
    assert logged_in.returncode == 0, logged_in.stderr
    files = [f"--{flag}={SEED / name}" for flag, name in FLAGS]
    imported = run([*CLIENT, "import", *files], env)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines()[-1] == DONE
    incomplete = run([*CLIENT, "import", files[0]], env)
    assert incomplete.returncode == 2
    assert "give a DIRECTORY" in incomplete.stderr


def test_both_commands_empty_the_data_set_only_with_allow_empty(
    client: Client, database_url: str, target: str, admin: Principal, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for _, name in FLAGS:
        (empty / name).write_bytes(b"")
    env = {"QUARTET_SERVER": target, "QUARTET_TOKEN": mint_token(admin.id, "admin")}
    for command, env_, status in (
        ([*SERVER, "--database-url", database_url], None, 1),
        ([*CLIENT, "import"], env, 3),
    ):
        assert run([*SERVER, "--database-url", database_url]).returncode == 0  # the demo data
        refused = run([*command, str(empty)], env_)
        assert refused.returncode == status
        assert "users.csv: users.csv has no rows, nor do the other files" in refused.stderr
        assert client.experiments.get_report().user_count == 10
        allowed = run([*command, "--allow-empty", str(empty)], env_)
        assert allowed.returncode == 0, allowed.stderr
        assert client.experiments.get_report().user_count == 0


def test_client_command_lists_every_problem_and_refusals(
    target: str, admin: Principal, sign_in: Any, tmp_path: Path
) -> None:
    env = {"QUARTET_SERVER": target, "QUARTET_TOKEN": mint_token(admin.id, "admin")}
    result = run([*CLIENT, "import", str(broken_copy(tmp_path))], env)
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "error: INVALID_ARGUMENT (IMPORT_FILES_INVALID)",
        result.stderr.splitlines()[1],  # the message
        "  user_experiments.csv:12:user_id: user 42 is not in users.csv",
        "  user_experiments.csv:12:experiment_run_time: 'long' is not a number of zero or more",
    ]
    analyst = sign_in("analyst")
    refused = run(
        [*CLIENT, "import", str(SEED)], {**env, "QUARTET_TOKEN": mint_token(analyst.id, "analyst")}
    )
    assert refused.returncode == 3
    assert refused.stderr.startswith("error: PERMISSION_DENIED (ROLE_NOT_ALLOWED)")


def test_client_command_shows_progress_on_a_terminal(target: str, admin: Principal) -> None:
    env = {"QUARTET_SERVER": target, "QUARTET_TOKEN": mint_token(admin.id, "admin")}
    stdout, stderr = run_on_terminal([*CLIENT, "import", str(SEED)], env)
    assert stdout.strip() == DONE
    assert "━" in stderr and "767/767 bytes" in stderr  # the bar, and the bytes sent of all


def test_client_commands_filter_export_and_list_imports(
    client: Client, database_url: str, target: str, admin: Principal, tmp_path: Path
) -> None:
    env = {"QUARTET_SERVER": target, "QUARTET_TOKEN": mint_token(admin.id, "admin")}
    assert run([*SERVER, "--database-url", database_url]).returncode == 0  # the seed's data
    assert run([*CLIENT, "import", str(broken_copy(tmp_path))], env).returncode == 3
    # Users who used compound 1 (experiments 1, 3, 5, 7, 9, 11) and signed up in March to July.
    narrowed = [*CLIENT, "report", "--compound", "1", "--signed-up-from", "2023-03-01"]
    narrowed += ["--signed-up-to", "2023-07-01", "--format", "csv"]
    printed = run(narrowed, env)
    assert printed.returncode == 0, printed.stderr
    assert [line.split(",")[1] for line in printed.stdout.splitlines()[1:]] == ["Dave", "Frank"]
    assert printed.stdout.splitlines()[1].endswith(",30,30")  # Dave's run time and average
    table = run([*CLIENT, "report", "--compound", "1"], env).stdout.splitlines()
    # Every experiment of the users who used compound 1: Alice's 10 and 15, then 20 to 60.
    assert table[5].split() == ["run", "time", "225"]
    assert table[7].split()[:3] == ["import", "1,", "published"]
    bad_day = run([*CLIENT, "report", "--signed-up-to", "July"], env)
    assert bad_day.returncode == 2 and "'July' is not a day" in bad_day.stderr

    exported = run(
        [
            *CLIENT,
            "export",
            "--format",
            "json",
            "--compound",
            "3",
            "--users",
            str(tmp_path / "users.json"),
            "--report",
            str(tmp_path / "report.json"),
        ],
        env,
    )
    assert exported.returncode == 0, exported.stderr
    expected = Expected.of(*SEED_FILES)
    chosen = expected.selected(3)  # everyone but Heidi, whose one experiment is 1;2
    assert exported.stderr.splitlines()[-1].startswith(f"wrote {len(chosen)} user rows")
    users = json.loads((tmp_path / "users.json").read_text())
    assert [u["user_id"] for u in users] == chosen
    assert [u["total_run_time"] for u in users] == [
        expected.user_run_times(chosen)[user][1] for user in chosen
    ]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["user_count"] == len(users)

    listed = run([*CLIENT, "imports", "--format", "csv"], env)
    assert listed.returncode == 0, listed.stderr
    rows = list(csv.reader(listed.stdout.splitlines()))
    assert rows[0][:3] == ["import", "outcome", "problems"]
    assert [(row[0], row[1], row[2], row[-1]) for row in rows[1:]] == [
        ("2", "refused", "2", f"account:{admin.id}"),
        ("1", "published", "0", "command-line"),
    ]
